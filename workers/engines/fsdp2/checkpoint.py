"""Save/load an engine's model (HF format), optimizer state and LR-scheduler state.

The model is written as a plain HF directory (config.json + model.safetensors) so a
checkpoint is also a model: rollout engines, evaluation and `from_pretrained` read it as is.
Full (unsharded) state dicts are gathered to global rank 0, which alone touches the disk;
on load rank 0 reads and broadcasts, so only rank 0 needs to see the directory. The
caller owns directory naming and atomic renames.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
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

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "lr_scheduler.pt"

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def _require_world(group: ProcessGroup | None) -> None:
    """torch's full-state-dict helpers gather to and broadcast from *global* rank 0 over the world."""
    if group is not None and dist.get_world_size(group) != dist.get_world_size():
        raise NotImplementedError("checkpointing needs the engine's data-parallel group to span all ranks")


def _unalias(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Give every key its own storage (tied embeddings may alias): safetensors refuses aliases,
    and keeping both keys lets the file load strictly into the sharded module."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    return out


def save_checkpoint(
    directory: str,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None,
    hf_config: PretrainedConfig,
    group: ProcessGroup | None,
) -> None:
    """Collective: every rank calls it; rank 0 writes; returns after a barrier."""
    _require_world(group)
    model_state = get_model_state_dict(module, options=_GATHER)
    optim_state = get_optimizer_state_dict(module, optimizer, options=_GATHER) if optimizer is not None else None
    if dist.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
        save_file(_unalias(model_state), os.path.join(directory, MODEL_FILE), metadata={"format": "pt"})
        hf_config.save_pretrained(directory)
        if optimizer is not None and scheduler is not None:
            torch.save(optim_state, os.path.join(directory, OPTIMIZER_FILE))
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
) -> None:
    """Collective: rank 0 reads the files and broadcasts; every rank ends with the same state.

    A frozen engine (optimizer None) loads only the weights; a trained one needs all three files.
    """
    _require_world(group)
    rank0 = dist.get_rank() == 0
    model_state = load_file(os.path.join(directory, MODEL_FILE)) if rank0 else {}
    set_model_state_dict(module, model_state, options=_SCATTER)
    if optimizer is not None and scheduler is not None:
        optim_state = torch.load(os.path.join(directory, OPTIMIZER_FILE), weights_only=True) if rank0 else {}
        set_optimizer_state_dict(module, optimizer, optim_state, options=_SCATTER)
        box = [torch.load(os.path.join(directory, SCHEDULER_FILE), weights_only=True) if rank0 else None]
        dist.broadcast_object_list(box, src=0, group=group, device=device)
        scheduler.load_state_dict(box[0])
    dist.barrier(group=group)
