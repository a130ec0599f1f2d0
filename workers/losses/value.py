"""Critic loss: clipped value regression (PPO, Schulman et al. 2017, Sec. 5; the clipping
follows OpenAI baselines' ppo2, as in Ziegler et al. 2019's RLHF code)."""

from __future__ import annotations

import torch
from torch import Tensor

from workers.losses.aggregation import LossAgg
from workers.losses.masked import masked_mean


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    *,
    cliprange_value: float | None,
    agg: LossAgg,
) -> tuple[Tensor, dict[str, Tensor]]:
    """0.5 * max((V - R)^2, (V_clip - R)^2) with V_clip = V_old + clip(V - V_old, -c, c).

    Taking the max makes the clip pessimistic: a value head cannot reduce its loss by moving
    more than c away from the values used to compute the advantages. cliprange_value=None
    gives the plain 0.5 * (V - R)^2.
    """
    err = (values - returns) ** 2
    if cliprange_value is None:
        loss_mat = 0.5 * err
        clipfrac = torch.zeros((), dtype=torch.float32, device=values.device)
    else:
        if cliprange_value <= 0:
            raise ValueError(f"cliprange_value must be > 0 or None, got {cliprange_value}")
        clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
        err_clipped = (clipped - returns) ** 2
        loss_mat = 0.5 * torch.maximum(err, err_clipped)
        clipfrac = masked_mean((err_clipped > err).to(torch.float32), response_mask).detach()
    metrics = {"vf_clipfrac": clipfrac, "vpred_mean": masked_mean(values, response_mask).detach()}
    return agg.reduce(loss_mat, response_mask), metrics
