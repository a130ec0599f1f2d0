"""Masked reductions over the valid (generated) tokens of a [B, R] tensor.

Shared by worker-side losses and driver-side advantage estimators (the driver may
import this module; it imports nothing from the orchestrator).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over positions where mask is 1 (all positions if dim is None).

    Selects with `where` rather than multiplying, so inf/NaN junk on padding cannot leak in.
    """
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over valid positions; an empty mask gives 0, never NaN."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance over all valid positions (no Bessel term, so one token gives 0)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: Tensor, mask: Tensor, *, eps: float) -> Tensor:
    """(x - mean) / sqrt(var + eps) over valid positions; invalid positions are set to 0.

    Equal values whiten to 0 (not NaN) because eps > 0 keeps the divisor positive.
    """
    if eps <= 0:
        raise ValueError(f"masked_whiten needs eps > 0, got {eps}")
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask.bool(), out, torch.zeros((), dtype=out.dtype, device=out.device))
