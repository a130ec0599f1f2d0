"""One optimizer step over a mini-batch, accumulated over micro-batches.

Why the loss is scaled by dp_size: each loss call returns its micro-batch's contribution to
the *global* mini-batch loss (normalised by global counts), backward sums contributions
over micro-batches, and FSDP's reduce-scatter then averages over ranks; multiplying by
dp_size turns that average into the sum, i.e. exactly the gradient of the global loss,
whatever the micro-batch size or the number of ranks.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributed import ProcessGroup
from torch.optim.lr_scheduler import LRScheduler

from workers.batch import Batch
from workers.engines import LossFn, LossNorm
from workers.engines.fsdp2.collectives import all_reduce_sum, clip_grads_, global_grad_norm, local_param_square_sum
from workers.engines.fsdp2.gather_once import sync_gradients_on, weights_gathered

RESERVED_METRICS: tuple[str, ...] = ("loss", "grad_norm", "lr", "step_skipped", "param_norm")


def loss_norm(batch: Batch, group: ProcessGroup | None, dp_size: int, device: torch.device) -> LossNorm:
    """Count valid response tokens and non-empty rows of the whole mini-batch (one all_reduce)."""
    mask = batch["response_mask"].to(torch.float64)
    local = torch.stack([mask.sum(), (mask.sum(dim=-1) > 0).sum().to(torch.float64)]).to(device)
    tokens, seqs = all_reduce_sum(local, group).tolist()
    return LossNorm(global_tokens=tokens, global_seqs=seqs, dp_size=dp_size)


def train_mini_batch(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    forward: Callable[[Batch], dict[str, Tensor]],
    loss_fn: LossFn,
    micro_batches: list[tuple[Tensor, Batch]],
    *,
    norm: LossNorm,
    grad_clip: float | None,
    group: ProcessGroup | None,
    dp_size: int,
    device: torch.device,
    gather_once: bool = False,
    reshard_after_forward: bool = True,
) -> dict[str, float]:
    """Accumulate over the planned micro-batches (any split: `norm` holds the global counts), clip by the global norm, step optimizer and LR, free the grads.

    gather_once: keep the weights gathered over the micro-batches and reduce the gradients once
    (workers/engines/fsdp2/gather_once.py); reshard_after_forward: the engine's setting to restore.

    Returns, identical on every rank: `loss` (the global mini-batch loss: all contributions
    summed), the loss_fn metrics averaged over micro-batches and ranks, `grad_norm` (before
    clipping), `lr` (used by this step), `step_skipped` (1.0 when the norm was not finite
    and the optimizer step was skipped; the LR schedule still advances) and `param_norm`
    (L2 norm of all weights after the step: the driver's divergence guard reads it).
    """
    optimizer.zero_grad(set_to_none=True)
    micro = [mb for _, mb in micro_batches]
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    metric_sums: dict[str, Tensor] = {}
    once = gather_once and len(micro) > 1  # workers/engines/fsdp2/gather_once.py
    try:
        with weights_gathered(module, enabled=once, reshard_after_forward=reshard_after_forward):
            for i, mb in enumerate(micro):
                sync_gradients_on(module, i == len(micro) - 1, enabled=once)
                loss, metrics = loss_fn(forward(mb), mb, norm)
                (loss * dp_size).backward()
                loss_sum += loss.detach().float()
                for key, value in metrics.items():
                    if key in RESERVED_METRICS:
                        raise ValueError(f"loss metric {key!r} clashes with an engine metric "
                                         f"({', '.join(RESERVED_METRICS)})")
                    value = torch.as_tensor(value, dtype=torch.float32).detach().to(device)
                    metric_sums[key] = metric_sums.get(key, torch.zeros((), dtype=torch.float32, device=device)) + value
    finally:
        sync_gradients_on(module, True, enabled=once)  # a failed pass must not leave the sync off

    params = [p for p in module.parameters() if p.requires_grad]
    grad_norm = global_grad_norm(params, group, device)
    lr = float(optimizer.param_groups[0]["lr"])
    finite = bool(torch.isfinite(grad_norm))
    if finite:
        if grad_clip is not None:
            clip_grads_(params, grad_clip, grad_norm)
        optimizer.step()
    # freed now, not at the next step: an offload between steps then has no fp32 grads to move
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()

    keys = sorted(metric_sums)
    local = torch.stack([(metric_sums[k] / len(micro)).double() for k in keys]
                        + [loss_sum.double(), local_param_square_sum(params, device)])
    reduced = all_reduce_sum(local, group).tolist()
    result = {k: v / dp_size for k, v in zip(keys, reduced[:-2])}
    result.update(loss=reduced[-2], grad_norm=float(grad_norm), lr=lr, step_skipped=0.0 if finite else 1.0,
                  param_norm=math.sqrt(reduced[-1]) if math.isfinite(reduced[-1]) else reduced[-1])
    return result
