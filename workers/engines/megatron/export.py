"""Full HF-named weights out of a TP x PP sharded Megatron model, bucket by bucket, on every rank that wants them.

The same plan runs on every rank: HF tensors in checkpoint order (embedding, layers, final
norm, head), each with its shape and owning pipeline stage, all derived from the config. For
each layer the owning stage gathers its Megatron tensors over the tensor-parallel group,
converts them to HF tensors (cast to the target dtype first, half the traffic for bf16) and
broadcasts each over the pipeline group; the other stages receive into empty tensors of the
planned shape. So every rank of the mesh must iterate to the end, in order (it is a chain of
collectives), and every consumer rank (one hosting a rollout engine) ends with all weights.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hybrid_engine.weight_stream import Bucket, StreamStats, plan_buckets
from workers.engines.megatron.convert import DecoderShape, megatron_to_hf, split_kind, unshard
from workers.engines.megatron.model import stage_layers
from workers.engines.megatron.optimizer import ParallelGroups


def hf_plan(shape: DecoderShape, pp: int) -> list[tuple[int, list[tuple[str, tuple[int, ...]]]]]:
    """[(owning stage, [(hf name, shape), ...]) per unit]; a unit is what one stage converts at once."""
    h, d, kv = shape.hidden_size, shape.head_dim, shape.num_kv_heads
    units: list[tuple[int, list[tuple[str, tuple[int, ...]]]]] = [
        (0, [("model.embed_tokens.weight", (shape.vocab_size, h))])]
    for stage in range(pp):
        for i in stage_layers(shape.num_layers, pp, stage):
            p = f"model.layers.{i}."
            tensors = [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (shape.num_heads * d, h)),
                       (p + "self_attn.k_proj.weight", (kv * d, h)), (p + "self_attn.v_proj.weight", (kv * d, h))]
            if shape.qkv_bias:
                tensors += [(p + "self_attn.q_proj.bias", (shape.num_heads * d,)), (p + "self_attn.k_proj.bias", (kv * d,)),
                            (p + "self_attn.v_proj.bias", (kv * d,))]
            tensors += [(p + "self_attn.o_proj.weight", (h, shape.num_heads * d)),
                        (p + "post_attention_layernorm.weight", (h,)),
                        (p + "mlp.gate_proj.weight", (shape.intermediate_size, h)),
                        (p + "mlp.up_proj.weight", (shape.intermediate_size, h)),
                        (p + "mlp.down_proj.weight", (h, shape.intermediate_size))]
            units.append((stage, tensors))
    head = [("model.norm.weight", (h,))] + ([] if shape.tied else [("lm_head.weight", (shape.vocab_size, h))])
    units.append((pp - 1, head))
    return units


class MegatronWeightExport:
    """Iterable of HF buckets; `stats` as the FSDP2 WeightStream's."""

    def __init__(self, module: nn.Module, shape: DecoderShape, groups: ParallelGroups, *, dtype: torch.dtype,
                 bucket_bytes: int, consumer: bool):
        self.module, self.shape, self.groups = module, shape, groups
        self.dtype, self.bucket_bytes, self.consumer = dtype, bucket_bytes, consumer
        self.stats = StreamStats(0, 0, 0, 0, 0.0, 0.0)

    def _unit_params(self, names: list[str]) -> dict[str, Tensor]:
        """This stage's Megatron tensors that one unit is built from (so only those are gathered)."""
        params = {n: p.detach() for n, p in self.module.named_parameters()}
        if names[0] == "model.embed_tokens.weight":
            return {n: t for n, t in params.items() if n.startswith("embedding.")}
        if names[0] == "model.norm.weight":
            return {n: t for n, t in params.items() if n.startswith(("decoder.final_layernorm.", "output_layer."))}
        start = stage_layers(self.shape.num_layers, self.groups.pp_size, self.groups.pp_rank).start
        prefix = f"decoder.layers.{int(names[0].split('.')[2]) - start}."
        return {n: t for n, t in params.items() if n.startswith(prefix)}

    def _gather_tp(self, name: str, local: Tensor) -> Tensor:
        g = self.groups
        local = local.to(self.dtype).contiguous()
        if g.tp_size == 1 or split_kind(name) == "replicated":
            return local
        pieces = [torch.empty_like(local) for _ in range(g.tp_size)]
        dist.all_gather(pieces, local, group=g.tp)
        return unshard(pieces, split_kind(name))

    def _convert_unit(self, names: list[str], unit_params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The HF tensors of one unit (embedding, one layer, or norm + head), built on its owning stage."""
        gathered = {n: self._gather_tp(n, t) for n, t in unit_params.items()}
        if names[0] == "model.embed_tokens.weight":
            return megatron_to_hf(gathered, self.shape, range(0), first=True, last=False)
        if names[0] == "model.norm.weight":
            return megatron_to_hf(gathered, self.shape, range(0), first=False, last=True)
        layer = int(names[0].split(".")[2])
        renamed = {"decoder.layers.0." + n.split(".", 3)[3]: t for n, t in gathered.items()}
        return megatron_to_hf(renamed, self.shape, range(layer, layer + 1), first=False, last=False)

    @torch.no_grad()
    def __iter__(self) -> Iterator[Bucket]:
        g = self.groups
        start = time.perf_counter()
        self.stats = StreamStats(0, 0, 0, 0, 0.0, 0.0)
        units = hf_plan(self.shape, g.pp_size)
        unit_of = {name: [n for n, _ in tensors] for _, tensors in units for name, _ in tensors}
        flat = [(stage, name, shape) for stage, tensors in units for name, shape in tensors]
        itemsize = self.dtype.itemsize
        sizes = [int(torch.Size(shape).numel()) * itemsize for _, _, shape in flat]
        plan = plan_buckets(sizes, self.bucket_bytes)
        converted: dict[str, Tensor] = {}
        pp_ranks = dist.get_process_group_ranks(g.pp) if g.pp_size > 1 else None
        for indices in plan:
            gather_start = time.perf_counter()
            bucket: Bucket = []
            for i in indices:
                stage, name, shape = flat[i]
                if name not in converted and stage == g.pp_rank:
                    converted.update(self._convert_unit(unit_of[name], self._unit_params(unit_of[name])))
                tensor = converted.pop(name) if stage == g.pp_rank else torch.empty(shape, dtype=self.dtype,
                                                                                     device=g.device)
                if pp_ranks is not None:
                    tensor = tensor.contiguous()
                    dist.broadcast(tensor, src=pp_ranks[stage], group=g.pp)
                self.stats.tensors += 1
                self.stats.bytes_streamed += tensor.numel() * tensor.element_size()
                if self.consumer:
                    bucket.append((name, tensor))
            self.stats.gather_seconds += time.perf_counter() - gather_start
            self.stats.buckets += 1
            self.stats.largest_bucket_bytes = max(self.stats.largest_bucket_bytes, sum(sizes[i] for i in indices))
            if self.consumer:
                yield bucket
        self.stats.seconds = time.perf_counter() - start
