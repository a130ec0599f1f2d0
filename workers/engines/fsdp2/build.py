"""Load an HF model and wrap it in FSDP2: one `fully_shard` group per decoder layer, plus the root.

Per-layer groups bound peak memory to one gathered layer at a time (and let the next
layer's all-gather overlap the current layer's compute); the root group holds what is
left (embeddings, final norm, LM / value / score head) and keeps tied embeddings together.
Only rank 0 reads the checkpoint into host memory; the other ranks build the model on the
meta device and receive their shards from it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from workers.engines.fsdp2.spec import FSDPEngineSpec, to_dtype


_AUTO_CLASSES = {"causal_lm": (AutoModelForCausalLM, {}), "value": (AutoModelForTokenClassification, {"num_labels": 1}),
                 "reward": (AutoModelForSequenceClassification, {"num_labels": 1})}


def hf_attention(name: str) -> str:
    """The attn_implementation HF builds the model with; "varlen" is Baton's (registered on first use)."""
    if name != "varlen":
        return name
    from workers.engines import varlen

    varlen.register()
    return varlen.ATTENTION_NAME


def load_hf_model(spec: FSDPEngineSpec, *, on_meta: bool = False) -> PreTrainedModel:
    """The model on CPU under spec.seed (so new heads agree across runs), or only its structure on the meta
    device (`on_meta`: a rank that receives the weights from rank 0 instead of reading them, see
    `fill_from_rank0`, so host memory does not grow with the ranks of a node).

    The global RNG is forked, not reseeded, so building an engine leaves other randomness
    in the process untouched. The model is put in eval mode and stays there: RL needs the
    training forward to be the same function as the one that scored the rollout, so
    dropout is always off.
    """
    auto_cls, extra = _AUTO_CLASSES[spec.model_kind]
    attention = hf_attention(spec.attn_implementation)
    kwargs: dict[str, object] = {"dtype": to_dtype(spec.master_dtype), "attn_implementation": attention, **extra}
    if on_meta:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec.model_path, **extra)
        with torch.device("meta"):
            model = auto_cls.from_config(config, dtype=kwargs["dtype"], attn_implementation=attention)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = auto_cls.from_pretrained(spec.model_path, **kwargs)
    if spec.model_kind == "reward" and model.config.get_text_config().pad_token_id is None:
        raise ValueError(f"reward model {spec.model_path!r} has no pad_token_id in its config; HF needs one for batches")
    if spec.model_kind != "causal_lm" and not isinstance(getattr(model, "score", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no `score` head; only HF's generic value/score heads are supported")
    return model.eval()


@torch.no_grad()
def fill_from_rank0(module: FSDPModule, full_state: dict, device: torch.device) -> None:
    """After sharding: ranks built on the meta device get storage, then every rank its shard of rank 0's weights.

    Collective over the world. Buffers that are not in the state dict (rotary tables) are sent too.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if dist.get_rank() != 0:
        module.to_empty(device=device)
    set_model_state_dict(module, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for _, buffer in module.named_buffers():
        dist.broadcast(buffer, src=0)


def decoder_layers(model: PreTrainedModel) -> list[nn.Module]:
    """The repeated transformer blocks, found by the class names HF lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"found no decoder layers in {type(model).__name__} (looked for {sorted(names)})")
    return layers


def enable_activation_checkpointing(layers: list[nn.Module]) -> None:
    """Recompute each layer in backward.

    Done by replacing the instance's `forward` rather than wrapping the module, so parameter
    names stay HF names (checkpoints and weight sync rely on them), and independently of HF's
    own switch, which only acts in train mode.
    """
    for layer in layers:
        inner = layer.forward

        def forward(*args: object, _inner=inner, **kwargs: object) -> object:
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = forward  # type: ignore[method-assign]


def build_mesh(device: torch.device, dp_group: ProcessGroup | None) -> DeviceMesh:
    """A 1-D data-parallel mesh over `dp_group` (None = all ranks)."""
    group = dp_group if dp_group is not None else dist.group.WORLD
    return DeviceMesh.from_group(group, device.type, mesh_dim_names=("dp",))


def shard_model(model: PreTrainedModel, spec: FSDPEngineSpec, mesh: DeviceMesh, device: torch.device) -> FSDPModule:
    """Apply fully_shard bottom-up (layers, then root); parameters become DTensor shards on `device`."""
    if mesh.device_type != device.type:
        raise ValueError(f"mesh device type {mesh.device_type!r} does not match engine device {device}")
    if spec.cpu_offload:
        offload: OffloadPolicy = CPUOffloadPolicy(pin_memory=device.type == "cuda")  # pinning needs an accelerator
    else:
        offload = OffloadPolicy()
    mp = MixedPrecisionPolicy(param_dtype=to_dtype(spec.param_dtype), reduce_dtype=to_dtype(spec.reduce_dtype))
    layers = decoder_layers(model)
    if spec.activation_checkpointing:
        enable_activation_checkpointing(layers)
    for layer in layers:
        fully_shard(
            layer, mesh=mesh, reshard_after_forward=spec.reshard_after_forward, mp_policy=mp, offload_policy=offload
        )
    # The root call also moves the remaining buffers (rotary tables) to the mesh's device.
    return fully_shard(
        model, mesh=mesh, reshard_after_forward=spec.reshard_after_forward, mp_policy=mp, offload_policy=offload
    )
