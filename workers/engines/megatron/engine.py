"""MegatronEngine: a causal LM under Megatron-core tensor, pipeline and data parallelism.

Same contract as the FSDP2 engine (workers/engines/base.py): log-probs and entropy, one
optimizer step per mini-batch driven by a per-micro-batch loss closure, offload/reload,
HF-named weight export, sharded save/load. Megatron's pipeline schedule owns the
micro-batches: the closure runs on the last stage only, and every rank of a data-parallel
group receives the same rows (the DP_MESH dispatch), of which the last stage's TP rank 0
returns the results.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from hybrid_engine.offload import TrainingStateOffloader
from hybrid_engine.training_state import OffloadsWithOffloader
from hybrid_engine.weight_stream import Bucket
from workers.batch import Batch
from workers.engines import LossFn, LossNorm
from workers.engines.base import EngineMesh
from workers.engines.fsdp2.spec import OptimSpec
from workers.engines.megatron import checkpoint
from workers.engines.megatron.batching import align, response_logits
from workers.engines.megatron.cpu_shims import apply_cpu_shims
from workers.engines.micro_batches import row_lengths
from workers.engines.megatron.export import MegatronWeightExport
from workers.engines.megatron.logprobs import vocab_parallel_log_probs
from workers.engines.megatron.model import build_stage, decoder_shape, hf_config_dict, load_hf_weights, transformer_config
from workers.engines.megatron.optimizer import MegatronOptimizer, ParallelGroups
from workers.engines.megatron.spec import MegatronEngineSpec


def ensure_model_parallel(tp: int, pp: int) -> None:
    """Megatron's process groups over the worker world; every Megatron engine of a process shares them.

    Also installs Megatron's no-op RNG tracker: dropout is always off (the training forward must be the
    function that scored the rollout), so no per-rank CUDA random state is ever forked.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    initialize_rng_tracker(inference_rng_tracker=True)

    if ps.model_parallel_is_initialized():
        have = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())
        if have != (tp, pp):
            raise ValueError(f"megatron: this process already has TP x PP = {have[0]} x {have[1]}; every Megatron role "
                             f"of a worker group must use one layout, got {tp} x {pp}")
        return
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)


class MegatronEngine(OffloadsWithOffloader):
    def __init__(self, spec: MegatronEngineSpec, optim: OptimSpec | None, *, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError("MegatronEngine needs torch.distributed initialised by the worker runtime")
        if spec.model_kind != "causal_lm":
            raise ValueError(f"the Megatron backend runs causal LMs (actor, ref); {spec.model_kind!r} stays on FSDP2")
        apply_cpu_shims()
        ensure_model_parallel(spec.tensor_model_parallel_size, spec.pipeline_model_parallel_size)
        self.spec, self.optim_spec, self.device = spec, optim, torch.device(device)
        self.groups = ParallelGroups(self.device, spec.sequence_parallel)
        g = self.groups
        self.hf_conf = hf_config_dict(spec.model_path)
        self.fill_token_id = int(self.hf_conf.get("pad_token_id") or 0)  # fills aligned rows' tails: never attended
        self.shape = decoder_shape(self.hf_conf)
        compute = getattr(torch, spec.compute_dtype)
        self.config = transformer_config(self.hf_conf, tp=g.tp_size, pp=g.pp_size,
                                         sequence_parallel=spec.sequence_parallel, compute_dtype=compute)
        self.module = build_stage(self.hf_conf, self.config, pp_rank=g.pp_rank, pp=g.pp_size).to(self.device)
        load_hf_weights(self.module, spec.model_path, self.hf_conf, tp=g.tp_size, tp_rank=g.tp_rank, pp=g.pp_size,
                        pp_rank=g.pp_rank)
        self.module.eval()  # dropout is off anyway; eval keeps any train-only behaviour off too
        if optim is None:
            self.module.requires_grad_(False)
            self.optimizer = None
        else:
            tied = None
            if self.shape.tied and g.pp_size > 1:
                tied = "embedding.word_embeddings.weight" if g.is_first_stage else (
                    "output_layer.weight" if g.is_last_stage else None)
            self.optimizer = MegatronOptimizer(self.module, optim, groups=g, tied_copy=tied)
        self.offloader = TrainingStateOffloader.for_device(
            self.module, self.optimizer.optimizer if self.optimizer else None, self.device)
        self.mesh = EngineMesh(dp_rank=g.dp_rank, dp_size=g.dp_size, tp_rank=g.tp_rank, tp_size=g.tp_size,
                               pp_rank=g.pp_rank, pp_size=g.pp_size)

    @property
    def hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.spec.model_path)

    # --- the pipeline schedule ---------------------------------------------------------------

    def _micro_batches(self, batch: Batch, size: int) -> list[Batch]:
        """Equal micro-batches (the pipeline sends fixed shapes); the last is topped up with copies of row 0
        whose response mask is zeroed, so they add nothing to a loss and their outputs are dropped."""
        chunks = batch.split_by_size(size)
        short = size - len(chunks[-1]) if chunks else 0
        if short and self.groups.pp_size > 1:
            filler = chunks[0].slice(0, 1).repeat(short, interleave=True)
            filler["response_mask"] = torch.zeros_like(filler["response_mask"])
            chunks[-1] = Batch.concat([chunks[-1], filler])
        return chunks

    def _schedule(self, batch: Batch, micro_batch_size: int, temperature: float, with_entropy: bool,
                  on_outputs, forward_only: bool) -> tuple[list[dict], Tensor | None]:
        """Outputs per micro-batch, and the row order they come in (None: the batch's own order)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (greedy rollouts score with 1.0), got {temperature}")
        g = self.groups
        self._check_same_rows(batch)
        order = None
        if self.spec.remove_padding:  # similar lengths share a micro-batch, so each is cut short
            order = torch.sort(row_lengths(batch["attention_mask"]), descending=True, stable=True).indices
            batch = batch.index(order)
        micro = self._micro_batches(batch, micro_batch_size)
        widths = [None] * len(micro)
        if self.spec.remove_padding:
            # the pipeline's stages exchange one activation shape: under PP every micro-batch gets the batch's longest
            widths = [int(row_lengths((mb if g.pp_size == 1 else batch)["attention_mask"]).max()) for mb in micro]
        aligned = [align(mb, pad_token_id=self.fill_token_id, seq_multiple=g.tp_size if g.sequence_parallel else 1,
                         width=w) for mb, w in zip(micro, widths)]
        vocab_start = g.tp_rank * (self.shape.padded_vocab(g.tp_size) // g.tp_size)

        def forward_step(data_iterator, model):
            mb, a = next(data_iterator)
            output = model(input_ids=a.tokens.to(self.device), position_ids=a.positions.to(self.device),
                           attention_mask=a.causal_mask.to(self.device))

            def loss_func(logits: Tensor):
                outputs = vocab_parallel_log_probs(
                    response_logits(logits, a).float() / temperature, a.responses.to(self.device),
                    vocab_start=vocab_start, vocab_size=self.shape.vocab_size, group=g.tp, with_entropy=with_entropy)
                return on_outputs(outputs, mb)

            return output, loss_func

        stored = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(list(zip(micro, aligned))), model=[self.module],
            num_microbatches=len(micro), seq_length=aligned[0].tokens.shape[1], micro_batch_size=len(micro[0]),
            forward_only=forward_only)
        return stored, order

    def _check_same_rows(self, batch: Batch) -> None:
        """Every rank of a data-parallel group must hold the same rows (a DP_MESH dispatch); a plain DP split
        would hand TP/PP peers different rows and train on nonsense without any error, so it is caught here."""
        g = self.groups
        if g.model_parallel_size == 1:
            return
        ids = batch["input_ids"].to(torch.float64)
        checksum = (ids * torch.arange(1, ids.numel() + 1, dtype=torch.float64).reshape(ids.shape)).sum()
        rows = torch.tensor(float(len(batch)), dtype=torch.float64)
        spread = torch.stack([checksum, -checksum, rows, -rows]).to(self.device)
        dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=g.model_parallel)  # [max, -min] of each
        if spread[0] != -spread[1] or spread[2] != -spread[3]:
            raise RuntimeError("megatron: the tensor/pipeline-parallel ranks of one data-parallel group received "
                               "different rows; call this role's methods with Dispatch.DP_MESH, not Dispatch.DP")

    # --- inference ---------------------------------------------------------------------------

    def compute_log_probs(self, batch: Batch, *, temperature: float, micro_batch_size: int,
                          with_entropy: bool) -> dict[str, Tensor]:
        """`log_probs` (and `entropy`) [B, R] in float32 on CPU, valid on the last stage (zeros elsewhere)."""

        def keep(outputs: dict[str, Tensor], mb: Batch):
            return torch.zeros((), device=self.device), torch.tensor(1), {k: v.detach().cpu() for k, v in outputs.items()}

        with torch.no_grad():
            stored, order = self._schedule(batch, micro_batch_size, temperature, with_entropy, keep,
                                           forward_only=True)
        keys = ["log_probs"] + (["entropy"] if with_entropy else [])
        if not self.groups.is_last_stage:
            return {k: torch.zeros(batch["responses"].shape, dtype=torch.float32) for k in keys}
        return {k: _in_batch_order(torch.cat([s[k] for s in stored])[: len(batch)], order) for k in keys}

    def compute_values(self, batch: Batch, *, micro_batch_size: int) -> Tensor:
        raise NotImplementedError("the Megatron backend has no value head; the critic runs on FSDP2")

    def compute_scores(self, batch: Batch, *, micro_batch_size: int) -> Tensor:
        raise NotImplementedError("the Megatron backend has no score head; the reward model runs on FSDP2")

    # --- training ----------------------------------------------------------------------------

    def _loss_norm(self, batch: Batch) -> LossNorm:
        g = self.groups
        mask = batch["response_mask"].to(torch.float64)
        counts = torch.stack([mask.sum(), (mask.sum(dim=-1) > 0).sum().to(torch.float64)]).to(self.device)
        if g.dp_size > 1:
            dist.all_reduce(counts, group=g.dp)
        tokens, seqs = counts.tolist()
        return LossNorm(global_tokens=tokens, global_seqs=seqs, dp_size=g.dp_size)

    def train_mini_batch(self, batch: Batch, loss_fn: LossFn, *, micro_batch_size: int, temperature: float | None,
                         with_entropy: bool) -> dict[str, float]:
        """One optimizer step on this DP group's share of a mini-batch; metrics as the FSDP2 engine's
        (on the last stage; the loss is the global mini-batch loss)."""
        if self.optimizer is None:
            raise RuntimeError("train_mini_batch on a frozen engine (built with optim=None)")
        if temperature is None:
            raise ValueError("a causal LM forward needs a temperature")
        g = self.groups
        norm = self._loss_norm(batch)
        self.optimizer.zero_grad()
        self.module.train(False)

        def loss(outputs: dict[str, Tensor], mb: Batch):
            value, metrics = loss_fn(outputs, mb, norm)
            detached = {k: torch.as_tensor(v, dtype=torch.float32).detach().cpu() for k, v in metrics.items()}
            return value, torch.tensor(1), {"loss": value.detach().float().cpu(), **detached}

        stored, _ = self._schedule(batch, micro_batch_size, temperature, with_entropy, loss, forward_only=False)
        result = self.optimizer.step()
        if g.is_last_stage:
            keys = sorted(k for k in stored[0] if k != "loss")
            local = torch.stack([torch.stack([s[k] for s in stored]).mean() for k in keys]
                                + [torch.stack([s["loss"] for s in stored]).sum()]).double()
            if g.dp_size > 1:
                dist.all_reduce(local, group=g.dp)
            values = local.tolist()
            result.update({k: v / g.dp_size for k, v in zip(keys, values[:-1])})
            result["loss"] = values[-1]
        return result

    # --- hybrid engine: offload (OffloadsWithOffloader) and weight export --------------------

    def export_weights(self, *, dtype: torch.dtype, bucket_bytes: int, consumer: bool) -> Iterable[Bucket]:
        return MegatronWeightExport(self.module, self.shape, self.groups, dtype=dtype, bucket_bytes=bucket_bytes,
                                    consumer=consumer)

    # --- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, directory: str) -> None:
        """Collective: sharded engine state (torch DCP) plus an HF model directory that transformers loads."""
        checkpoint.save(directory, self)

    def load_checkpoint(self, directory: str) -> None:
        checkpoint.load(directory, self)



def _in_batch_order(rows: Tensor, order: Tensor | None) -> Tensor:
    """Rows computed in `order` (sorted by length) put back where the caller's batch had them."""
    if order is None:
        return rows
    out = torch.empty_like(rows)
    out[order] = rows
    return out
