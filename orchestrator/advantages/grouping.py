"""Per-prompt group statistics over a batch, from the uid array (vectorised, no per-row loop)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def group_ids(index: np.ndarray | None, device: torch.device) -> Tensor:
    """Dense group id [B] per row, numbered by first appearance of each uid."""
    if index is None:
        raise ValueError("this advantage estimator groups samples by prompt and needs index (uids), got None")
    ids: dict[object, int] = {}
    dense = [ids.setdefault(uid, len(ids)) for uid in index.tolist()]
    return torch.tensor(dense, dtype=torch.long, device=device)


def group_stats(scores: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row (group sum, group size, group mean, group std) for scores [B].

    std is the unbiased (Bessel) sample std, torch.std's default as in common GRPO code; a group
    of one has std 0 (not NaN), and since its mean is its own score its centred score is 0.
    """
    n_groups = int(ids.max().item()) + 1 if ids.numel() else 0

    def per_group_sum(x: Tensor) -> Tensor:
        return torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(0, ids, x)

    size = per_group_sum(torch.ones_like(scores))
    total = per_group_sum(scores)
    mean = total / size
    sq = per_group_sum((scores - mean[ids]) ** 2)
    std = torch.sqrt(sq / (size - 1).clamp(min=1.0))
    return total[ids], size[ids], mean[ids], std[ids]
