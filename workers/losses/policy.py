"""Policy-gradient objectives, registered by config name: ppo, cispo, gspo, reinforce.

All take [B, R] tensors (log-probs of the sampled tokens under the current and the
behaviour policy, per-token advantages, response mask) and return a loss to *minimise*
plus detached scalar metrics:
    ppo_kl          mean over valid tokens of (old_log_prob - log_prob), the k1 estimate of KL(old || new)
    clipfrac        fraction of valid tokens whose ratio/weight hit the (upper or trust-region) clip
    clipfrac_lower  ppo: fraction where the dual clip bound is active;
                    cispo: fraction whose IS weight hit the lower bound (0 when that bound is off)
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.losses.aggregation import LossAgg
from workers.losses.masked import masked_mean
from workers.losses.registry import register_policy_loss

# exp() overflows float32 near 89; a log-ratio beyond +-20 (ratio ~5e8) is far outside any trust
# region anyway, so clamping there only keeps losses and gradients finite on runaway tokens.
LOG_RATIO_CLAMP = 20.0


def _log_ratio(log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
    return (log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _frac(cond: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(cond.to(torch.float32), mask).detach()


def _check_clip(clip_ratio_low: float | None, clip_ratio_high: float) -> None:
    if clip_ratio_low is not None and not 0.0 <= clip_ratio_low <= 1.0:
        raise ValueError(f"clip_ratio_low must be in [0, 1] (1 = no lower clip), got {clip_ratio_low}")
    if clip_ratio_high < 0.0:
        raise ValueError(f"clip_ratio_high must be >= 0, got {clip_ratio_high}")


def clipped_surrogate(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_ratio_low: float,
                      clip_ratio_high: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's per-token max(-A r, -A clip(r, 1-low, 1+high)), where the clip is active, and log r."""
    log_ratio = _log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    surr = -advantages * ratio
    surr_clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    return torch.maximum(surr, surr_clipped), surr_clipped > surr, log_ratio


@register_policy_loss("ppo", params={"clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high",
                                      "dual_clip_c": "dual_clip_c"})
def ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
    clip_ratio_low: float,
    clip_ratio_high: float,
    dual_clip_c: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7) with DAPO's asymmetric clip-higher
    bounds [1-low, 1+high] (Yu et al. 2025) and, for A < 0, the dual clip -A*c that caps the
    loss when the ratio explodes (dual-clip PPO, Ye et al. 2020). dual_clip_c=None disables it.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c (dual clip) must be > 1, got {dual_clip_c}")
    loss_mat, clipped, log_ratio = clipped_surrogate(log_prob, old_log_prob, advantages, clip_ratio_low,
                                                     clip_ratio_high)
    clipfrac = _frac(clipped, response_mask)
    if dual_clip_c is not None:
        negative = advantages < 0
        dual = -advantages * dual_clip_c
        clipfrac_lower = _frac((loss_mat > dual) & negative, response_mask)
        loss_mat = torch.where(negative, torch.minimum(loss_mat, dual), loss_mat)
    else:
        clipfrac_lower = torch.zeros((), dtype=torch.float32, device=log_prob.device)
    metrics = {
        "ppo_kl": masked_mean(-log_ratio, response_mask).detach(),
        "clipfrac": clipfrac,
        "clipfrac_lower": clipfrac_lower,
    }
    return agg.reduce(loss_mat, response_mask), metrics


@register_policy_loss("cispo", params={"clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high"})
def cispo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
    clip_ratio_low: float | None,
    clip_ratio_high: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1 report, 2025, Sec. 3.1): -sg(clip(r, 1-low, 1+high)) * A * log pi.

    The IS weight is clipped and detached instead of the token being dropped, so every valid
    token keeps a gradient A * w / normaliser. The paper clips only above: clip_ratio_low=None
    (or 1.0, a lower bound of 0) turns the lower clip off.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    log_ratio = _log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    lower = None if clip_ratio_low is None else 1.0 - clip_ratio_low
    weight = ratio.clamp(min=lower, max=1.0 + clip_ratio_high).detach()
    loss_mat = -weight * advantages * log_prob
    if lower is None:
        clipfrac_lower = torch.zeros((), dtype=torch.float32, device=log_prob.device)
    else:
        clipfrac_lower = _frac(ratio < lower, response_mask)
    metrics = {
        "ppo_kl": masked_mean(-log_ratio, response_mask).detach(),
        "clipfrac": _frac(ratio > 1.0 + clip_ratio_high, response_mask),
        "clipfrac_lower": clipfrac_lower,
    }
    return agg.reduce(loss_mat, response_mask), metrics


@register_policy_loss("gspo", params={"clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high"})
def gspo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
    clip_ratio_low: float,
    clip_ratio_high: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, Sec. 4.1, with the GSPO-token form of Sec. 4.3).

    Sequence ratio s_i = exp(mean_t log(pi/pi_old)) is clipped as one unit; per token
    s_i,t = sg(s_i) * pi_t / sg(pi_t) has the value of s_i but routes the gradient through
    each token's log-prob. The paper's objective is a mean over sequences of the token mean:
    use agg mode "seq-mean-token-mean" for it.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    token_log_ratio = log_prob - old_log_prob
    seq_log_ratio = masked_mean(token_log_ratio, response_mask, dim=-1)  # [B]
    seq_log_ratio = seq_log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(seq_log_ratio.unsqueeze(-1) + log_prob - log_prob.detach())  # value s_i, grad per token
    surr = -advantages * ratio
    surr_clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss_mat = torch.maximum(surr, surr_clipped)
    metrics = {
        "ppo_kl": masked_mean(-token_log_ratio, response_mask).detach(),
        "clipfrac": _frac(surr_clipped > surr, response_mask),
    }
    return agg.reduce(loss_mat, response_mask), metrics


@register_policy_loss("reinforce", params={})
def reinforce_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain on-policy REINFORCE (Williams 1992): -A * log pi, no ratio and no clipping.

    old_log_prob only feeds the ppo_kl metric (how off-policy the batch already is).
    """
    metrics = {"ppo_kl": masked_mean(old_log_prob - log_prob, response_mask).detach()}
    return agg.reduce(-advantages * log_prob, response_mask), metrics
