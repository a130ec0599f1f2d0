"""Megatron checkpoints: the sharded engine state in torch DCP, and an HF model directory beside it.

DCP (torch.distributed.checkpoint) writes every rank's tensors in parallel. Keys carry the
tensor-parallel and pipeline coordinates (`model.pp1.tp0.<name>`), so each model-parallel
shard is its own entry, while data-parallel replicas write identical keys and DCP keeps one
copy. Resuming therefore needs the same TP x PP layout (any DP size). The optimizer's moments,
step counts and fp32 master weights are saved the same way; a fresh optimizer's lazily created
state is materialised (zeros) first so that loading can fill it in place.

The HF directory (config.json + model.safetensors, tied head stored once) is what rollout engines,
`baton train model.path=...` and `AutoModelForCausalLM.from_pretrained` read; rank 0 writes it
from the same weight export the hybrid engine streams.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

if TYPE_CHECKING:
    from workers.engines.megatron.engine import MegatronEngine

DCP_DIR = "megatron_dcp"
MODEL_FILE = "model.safetensors"
_EXPORT_BUCKET_BYTES = 1 << 28


def _materialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                      "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}


def _state(engine: "MegatronEngine") -> dict:
    g = engine.groups
    shard = f"pp{g.pp_rank}.tp{g.tp_rank}."
    state: dict = {f"model.{shard}{name}": p.detach() for name, p in engine.module.named_parameters()}
    if engine.optimizer is not None:
        opt = engine.optimizer.optimizer
        _materialise_optimizer_state(opt)
        for i, master in enumerate(engine.optimizer.master):
            if master is not engine.optimizer.params[i][1]:
                state[f"optim.{shard}{i}.master"] = master.detach()
            for key, value in opt.state[master].items():
                state[f"optim.{shard}{i}.{key}"] = value
        state["optim.scheduler"] = engine.optimizer.scheduler.state_dict()
    return state


def save(directory: str, engine: "MegatronEngine") -> None:
    """Collective over the engine's ranks."""
    os.makedirs(directory, exist_ok=True)
    dcp.save(_state(engine), checkpoint_id=os.path.join(directory, DCP_DIR))
    write_hf(directory, engine)
    dist.barrier()


def write_hf(directory: str, engine: "MegatronEngine") -> None:
    """Collective: rank 0 writes config.json + model.safetensors (float32) from the weight export."""
    rank0 = dist.get_rank() == 0
    tensors: dict[str, torch.Tensor] = {}
    for bucket in engine.export_weights(dtype=torch.float32, bucket_bytes=_EXPORT_BUCKET_BYTES, consumer=rank0):
        tensors.update((name, t.contiguous().cpu()) for name, t in bucket)
    if rank0:
        save_file(tensors, os.path.join(directory, MODEL_FILE), metadata={"format": "pt"})
        engine.hf_config.save_pretrained(directory)


@torch.no_grad()
def load(directory: str, engine: "MegatronEngine") -> None:
    """Collective: restore what `save` wrote, in place; the TP x PP layout must be the one that saved it."""
    path = os.path.join(directory, DCP_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{directory} has no {DCP_DIR}/: not a Megatron checkpoint (was it written by "
                                "backend=fsdp2? resume with the backend that wrote it)")
    state = _state(engine)
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as err:  # noqa: BLE001 - re-raised with the layout named
        g = engine.groups
        raise RuntimeError(f"cannot load {path} with TP={g.tp_size} x PP={g.pp_size}: {err} (a Megatron checkpoint "
                           "resumes with the tensor/pipeline layout that wrote it)") from None
    if engine.optimizer is not None:
        opt = engine.optimizer
        opt.scheduler.load_state_dict(state["optim.scheduler"])
        for (_, p), master in zip(opt.params, opt.master):
            if master is not p:
                p.copy_(master.to(p.dtype))
        from workers.engines.fsdp2.optim import apply_hyperparameters

        apply_hyperparameters(opt.optimizer, opt.scheduler, opt.spec)
    dist.barrier()
