"""Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models", arXiv 2505.22617: Sec. 3 derives the entropy dynamics, Sec. 4 the two methods).

The paper shows that under policy gradient the entropy change of a step is driven by the covariance between
a token's log-probability and its advantage: confident tokens with high advantage are what collapse entropy.
Both losses restrict the update of a small fraction of high-covariance tokens, with the centred product
    Cov_t = (log pi_t - mean log pi) * (A_t - mean A)
as the per-token covariance, means over the valid tokens this call sees (detached: it only selects tokens).

The selection is made per loss call, i.e. per micro-batch, as in the authors' code: which tokens, and how many
(max(1, int(ratio * valid tokens))), depend on how the mini-batch is split, so unlike the plain PPO loss these
two are not invariant to the micro-batch size. With ratios of 2e-4 to 2e-3 that is a handful of tokens either way.

Randomness (Clip-Cov) is drawn from torch's global CPU generator, which the workers checkpoint with their
step (workers/roles/rng_state.py), so a resumed run draws the same tokens; CPU, so CPU and GPU runs agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.losses.aggregation import LossAgg
from workers.losses.masked import masked_mean
from workers.losses.policy import _check_clip, _frac, _log_ratio, clipped_surrogate
from workers.losses.registry import register_policy_loss


def token_covariance(log_prob: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Detached [B, R] centred product (log pi - mean log pi) * (A - mean A), means over valid tokens.

    Padding positions hold junk: select with the mask.
    """
    lp = log_prob.detach()
    adv = advantages.detach()
    return (lp - masked_mean(lp, mask)) * (adv - masked_mean(adv, mask))


def _n_selected(ratio: float, mask: Tensor) -> tuple[Tensor, int]:
    """(valid mask as bool, how many tokens to select: max(1, int(ratio * n_valid)), 0 when none is valid)."""
    valid = mask.bool()
    n_valid = int(valid.sum().item())
    return valid, (max(1, int(ratio * n_valid)) if n_valid else 0)


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (a fraction of the valid tokens), got {value}")


@register_policy_loss("clip_cov", params={"clip_ratio_low": "clip_ratio_low", "clip_ratio_high": "clip_ratio_high",
                                           "clip_cov_ratio": "clip_cov_ratio", "clip_cov_lb": "clip_cov_lb",
                                           "clip_cov_ub": "clip_cov_ub"})
def clip_cov_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_cov_ratio: float,
    clip_cov_lb: float,
    clip_cov_ub: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov: the PPO clipped surrogate, with the gradient of a few random high-covariance tokens stopped.

    Candidates are the valid tokens the ratio clip has not already cut off (their gradient is 0 anyway)
    whose Cov_t lies strictly inside (clip_cov_lb, clip_cov_ub); max(1, int(clip_cov_ratio * n_valid)) of
    them (all, if fewer) are drawn uniformly without replacement and detached.

    A detached token keeps its loss *value* (loss_mat.detach()), it is not zeroed: the paper's operation is
    a stop-gradient, the gradient is the same either way (the authors' verl code multiplies by 0), and keeping
    the value leaves the logged pg_loss a measure of the objective rather than of how many tokens were drawn.

    Metrics: ppo_kl, clipfrac (the ratio clip, as ppo) and clip_cov_frac, the fraction of valid tokens detached.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    _check_ratio("clip_cov_ratio", clip_cov_ratio)
    if not clip_cov_lb < clip_cov_ub:
        raise ValueError(f"clip_cov_lb must be < clip_cov_ub, got [{clip_cov_lb}, {clip_cov_ub}]")
    loss_mat, clipped, log_ratio = clipped_surrogate(log_prob, old_log_prob, advantages, clip_ratio_low,
                                                     clip_ratio_high)

    valid, n_pick = _n_selected(clip_cov_ratio, response_mask)
    cov = token_covariance(log_prob, advantages, response_mask)
    window = valid & ~clipped & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    candidates = window.flatten().nonzero().squeeze(-1)
    picked = torch.zeros(window.numel(), dtype=torch.bool, device=window.device)
    if candidates.numel() and n_pick:
        order = torch.randperm(candidates.numel()).to(candidates.device)  # global CPU generator, see module doc
        picked[candidates[order[:n_pick]]] = True
    picked = picked.view_as(window)
    loss_mat = torch.where(picked, loss_mat.detach(), loss_mat)
    metrics = {
        "ppo_kl": masked_mean(-log_ratio, response_mask).detach(),
        "clipfrac": _frac(clipped, response_mask),
        "clip_cov_frac": _frac(picked, response_mask),
    }
    return agg.reduce(loss_mat, response_mask), metrics


@register_policy_loss("kl_cov", params={"kl_cov_ratio": "kl_cov_ratio", "kl_cov_coef": "kl_cov_coef"})
def kl_cov_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
    kl_cov_ratio: float,
    kl_cov_coef: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov: the unclipped surrogate -A * r, plus kl_cov_coef * |log pi - log pi_old| on the
    max(1, int(kl_cov_ratio * n_valid)) valid tokens of largest Cov_t.

    Only tokens with Cov_t > 0 are eligible (so fewer may be penalised): the method exists to slow down the
    tokens whose update lowers entropy, which are those with positive covariance; a token with Cov_t <= 0
    is not one of them. This differs from the authors' verl code, which takes the top k whatever their
    sign, only when a call has fewer than k positive-covariance tokens; in particular a call where every
    advantage is 0 (groups of equal rewards) has no gradient at all, where verl would still pull such
    tokens back toward pi_old on a second PPO epoch.

    Metrics: ppo_kl, and kl_cov_frac, the fraction of valid tokens penalised.
    """
    _check_ratio("kl_cov_ratio", kl_cov_ratio)
    if kl_cov_coef < 0:
        raise ValueError(f"kl_cov_coef must be >= 0, got {kl_cov_coef}")
    log_ratio = _log_ratio(log_prob, old_log_prob)
    loss_mat = -advantages * torch.exp(log_ratio)

    valid, k = _n_selected(kl_cov_ratio, response_mask)
    cov = token_covariance(log_prob, advantages, response_mask)
    eligible = valid & (cov > 0)
    scores = torch.where(eligible, cov, torch.full_like(cov, float("-inf"))).flatten()
    k = min(k, int(eligible.sum().item()))
    picked = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        picked[torch.topk(scores, k).indices] = True
    picked = picked.view_as(cov)
    penalty = kl_cov_coef * (log_prob - old_log_prob).abs()
    loss_mat = loss_mat + torch.where(picked, penalty, torch.zeros_like(penalty))
    metrics = {
        "ppo_kl": masked_mean(-log_ratio, response_mask).detach(),
        "kl_cov_frac": _frac(picked, response_mask),
    }
    return agg.reduce(loss_mat, response_mask), metrics
