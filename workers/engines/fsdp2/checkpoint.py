"""Save/load an engine's model (HF format), optimizer state and LR-scheduler state.

The model is written as a plain HF directory (config.json + model.safetensors) so a
checkpoint is also a model: rollout engines, evaluation and `from_pretrained` read it as is;
its full weights are gathered to global rank 0, which writes them, and on load rank 0 reads
and broadcasts them. The optimizer state, the largest part (two fp32 moments per weight), is
never gathered: torch DCP writes each rank's shards in parallel (`optimizer_dcp/`) and each
rank reads its own back, so that directory must be one every rank sees (a shared path on a
multi-node cluster). The caller owns directory naming and atomic renames.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed import ProcessGroup
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.lr_scheduler import LRScheduler
from transformers import PretrainedConfig

from hybrid_engine.names import tied_aliases

MODEL_FILE = "model.safetensors"
OPTIMIZER_DIR = "optimizer_dcp"  # torch DCP: each rank writes its own shard of the optimizer state
SCHEDULER_FILE = "lr_scheduler.pt"

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def _require_world(group: ProcessGroup | None) -> None:
    """torch's full-state-dict helpers gather to and broadcast from *global* rank 0 over the world."""
    if group is not None and dist.get_world_size(group) != dist.get_world_size():
        raise NotImplementedError("checkpointing needs the engine's data-parallel group to span all ranks")


def _hf_state(state: dict[str, Tensor], aliases: dict[str, str]) -> dict[str, Tensor]:
    """What goes into model.safetensors: tied aliases left out, every other tensor in its own storage.

    HF checkpoints store a tied weight once, under its source name; so does Baton, so that a
    Baton checkpoint is an ordinary HF directory for every consumer (vLLM expects exactly the
    tensors a streamed update sends, and the stream sends a tied parameter once).
    """
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key in aliases and aliases[key] in state:
            continue
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor.contiguous()  # safetensors refuses aliases
        seen.add(ptr)
    return out


def _with_aliases(state: dict[str, Tensor], aliases: dict[str, str]) -> dict[str, Tensor]:
    """Fill tied names an HF file leaves out, so the state loads strictly into the sharded module."""
    for target, source in aliases.items():
        if target not in state and source in state:
            state[target] = state[source]
    return state


def save_checkpoint(
    directory: str,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None,
    hf_config: PretrainedConfig,
    group: ProcessGroup | None,
) -> None:
    """Collective: every rank calls it; rank 0 writes the HF weights, every rank its optimizer shard."""
    _require_world(group)
    model_state = get_model_state_dict(module, options=_GATHER)
    if dist.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
        save_file(_hf_state(model_state, tied_aliases(module)), os.path.join(directory, MODEL_FILE),
                  metadata={"format": "pt"})
        hf_config.save_pretrained(directory)
    if optimizer is not None and scheduler is not None:
        dcp.save({"optimizer": get_optimizer_state_dict(module, optimizer)},
                 checkpoint_id=os.path.join(directory, OPTIMIZER_DIR))
        if dist.get_rank() == 0:
            torch.save(scheduler.state_dict(), os.path.join(directory, SCHEDULER_FILE))
    dist.barrier(group=group)


def load_checkpoint(
    directory: str,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None,
    group: ProcessGroup | None,
    device: torch.device,
    aliases: dict[str, str],
) -> None:
    """Collective: rank 0 reads the files and broadcasts; every rank ends with the same state.

    A frozen engine (optimizer None) loads only the weights; a trained one needs all three files.
    `aliases` (hybrid_engine's `tied_aliases` of the module) fills the tied names the file leaves out.
    """
    _require_world(group)
    rank0 = dist.get_rank() == 0
    model_state = _with_aliases(load_file(os.path.join(directory, MODEL_FILE)), aliases) if rank0 else {}
    set_model_state_dict(module, model_state, options=_SCATTER)
    if optimizer is not None and scheduler is not None:
        state = {"optimizer": get_optimizer_state_dict(module, optimizer)}  # this rank's shards, filled in place
        dcp.load(state, checkpoint_id=os.path.join(directory, OPTIMIZER_DIR))
        set_optimizer_state_dict(module, optimizer, state["optimizer"])
        box = [torch.load(os.path.join(directory, SCHEDULER_FILE), weights_only=True) if rank0 else None]
        dist.broadcast_object_list(box, src=0, group=group, device=device)
        scheduler.load_state_dict(box[0])
    dist.barrier(group=group)
