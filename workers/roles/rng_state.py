"""Per-rank random state of a training role, saved beside its checkpoint so a resumed step equals the original.

What a role's step draws from: its own mini-batch shuffle generator and, where anything
random runs in torch's default generator (dropout, if a model ever turns it on), the
process-global CPU (and CUDA) state. Each rank writes its own file: ranks draw differently.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

RNG_DIR = "rng_state"


def _file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / RNG_DIR / f"rank_{rank}.pt"


def save_rng_state(directory: str | Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    state = {f"gen/{name}": g.get_state() for name, g in generators.items()}
    state["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    path = _file(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_rng_state(directory: str | Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """Restore what `save_rng_state` wrote for this rank; a checkpoint without the file is refused."""
    path = _file(directory, rank)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no random state for rank {rank} ({path}); it was "
                                "written with a different number of ranks or by an older Baton")
    state = torch.load(path, weights_only=True)
    for name, g in generators.items():
        g.set_state(state[f"gen/{name}"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
