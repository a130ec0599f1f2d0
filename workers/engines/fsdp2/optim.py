"""AdamW over the sharded parameters and its LR schedule (linear warm-up, then constant or cosine).

The schedule is a pure function of the optimizer-step index so it can be unit-tested and
so a resumed run (scheduler state = the step index) reproduces the uninterrupted one.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from workers.engines.fsdp2.spec import OptimSpec


def lr_ratio(step: int, spec: OptimSpec) -> float:
    """Multiplier of spec.lr for optimizer step `step` (0-based)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    decay_steps = max(1, spec.total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / decay_steps)
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimSpec) -> torch.optim.AdamW:
    """AdamW on the (DTensor) parameters that require grad."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: an engine with an OptimSpec needs requires_grad parameters")
    return torch.optim.AdamW(
        trainable, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
    )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec) -> LambdaLR:
    """A LambdaLR over `lr_ratio`.

    The lambda is a closure on purpose: for plain functions LambdaLR's state_dict holds only
    the step index and base LRs, so a checkpoint restores where the run is in the schedule
    while the schedule's shape still comes from the current config.
    """

    def ratio(step: int) -> float:
        return lr_ratio(step, spec)

    return LambdaLR(optimizer, lr_lambda=ratio)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, spec: OptimSpec) -> None:
    """After loading a checkpoint: the configured lr, betas, eps and weight decay replace the saved ones.

    An optimizer's state_dict carries its hyperparameters, so a run resumed with a new
    `optim.lr` (the usual answer to a run that diverged) would silently keep the old one.
    Moments and the schedule position stay as saved; with an unchanged config this is a no-op.
    """
    scheduler.base_lrs = [spec.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group.update(initial_lr=spec.lr, lr=spec.lr * lr_ratio(scheduler.last_epoch, spec), betas=spec.betas,
                     eps=spec.eps, weight_decay=spec.weight_decay)
