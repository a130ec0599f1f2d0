"""Where the teacher of on-policy distillation (algorithm=opd) comes from.

`teacher.path` takes what a user has: a Hugging Face model dir, a Baton step checkpoint (`.../step_40`), a
run's `checkpoints/` dir or its `checkpoints/latest` pointer; all resolve to the policy weights inside. The
repo ships a teacher for the built-in task (what `make run` ends with, bf16), installed into the cache the
first time the default `teacher.path` is used, as the warm start is.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from orchestrator import warm_start
from orchestrator.config.errors import ConfigError
from orchestrator.trainer.checkpointing import latest_checkpoint

SHIPPED_ROOT = warm_start.SHIPPED_ROOT.parent / "teachers"


def default_path(cfg: DictConfig) -> Path:
    """configs/algorithm/opd.yaml's teacher.path."""
    return Path(cfg.trainer.cache_dir) / "teacher" / f"{cfg.task.name}-tiny-{cfg.model.tiny.arch}"


def shipped_path(cfg: DictConfig) -> Path:
    return SHIPPED_ROOT / f"{cfg.task.name}-tiny-{cfg.model.tiny.arch}"


def resolve(path: str) -> Path:
    """The model dir behind a teacher.path (see the module docstring); a dir with no model is returned as is,
    for check_model_dir to report."""
    p = Path(path)
    if p.is_file() and p.name == "latest":  # checkpoints/latest: a pointer file
        p = p.parent
    if (p / "latest").is_file():  # a run's checkpoints/ dir
        try:
            found = latest_checkpoint(p)
        except FileNotFoundError as err:
            raise ConfigError("teacher.path", str(err)) from None
        p = found if found is not None else p
    if (p / "actor" / "config.json").is_file():  # a Baton step checkpoint
        p = p / "actor"
    return p


def prepare(cfg: DictConfig) -> None:
    """Install the shipped teacher at its default path if needed, then point teacher.path at the model dir."""
    path = Path(cfg.teacher.path)
    if not path.exists() and path == default_path(cfg) and shipped_path(cfg).is_dir():
        warm_start.copy_converting(shipped_path(cfg), path, torch.float32)
        print(f"teacher: shipped {shipped_path(cfg)} -> {path}")
    cfg.teacher.path = str(resolve(str(path)))


def ship(checkpoint: str, cfg: DictConfig) -> Path:
    """Store a finished run's policy as the task's shipped teacher (bf16); baton_teacher.json beside it says how."""
    src = resolve(checkpoint)
    dst = shipped_path(cfg)
    dst.parent.mkdir(parents=True, exist_ok=True)
    warm_start.copy_converting(src, dst, torch.bfloat16)
    return dst
