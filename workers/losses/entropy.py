"""Entropy of the policy's next-token distribution, for the entropy bonus and monitoring."""

from __future__ import annotations

import torch
from torch import Tensor

from workers.losses.aggregation import LossAgg


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v over the last dim, via log_softmax (stable for large logits).

    Vocabulary entries with p = 0 (e.g. logits masked to -inf) contribute 0, not 0 * -inf = NaN.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    return -(p * log_p.masked_fill(p == 0, 0.0)).sum(dim=-1)


def entropy_loss(entropy: Tensor, response_mask: Tensor, *, agg: LossAgg) -> Tensor:
    """Aggregated entropy; the actor adds -entropy_coeff * this to its loss (a bonus)."""
    return agg.reduce(entropy, response_mask)
