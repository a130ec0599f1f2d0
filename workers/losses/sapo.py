"""SAPO: a soft, temperature-controlled gate in place of PPO's hard ratio clip. Registered as `sapo`."""

from __future__ import annotations

import torch
from torch import Tensor

from workers.losses.aggregation import LossAgg
from workers.losses.masked import masked_mean
from workers.losses.policy import _log_ratio
from workers.losses.registry import register_policy_loss


@register_policy_loss("sapo", params={"tau_pos": "tau_pos", "tau_neg": "tau_neg"})
def sapo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    agg: LossAgg,
    tau_pos: float,
    tau_neg: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv 2511.20347, the SAPO objective).

    Per token, with r = pi / pi_old and s = sigmoid(tau * (r - 1)):
        f(r) = s * 4 / tau,        loss_mat = -f(r) * A
    so d loss_mat / d log pi = -A * 4 s (1 - s) * r. At r = 1 the weight 4 s (1 - s) is 1 and this is the
    plain policy gradient -A * grad log pi; as r leaves 1 the weight decays smoothly (no hard cut-off), faster
    for larger tau. tau = tau_pos where A > 0 and tau_neg otherwise (A == 0 takes tau_neg, as the paper's
    "tau_pos if A > 0 else tau_neg"; with A == 0 the token contributes 0 to value and gradient either way).
    The paper uses tau_neg > tau_pos: negative-advantage updates, which push probability mass onto
    many other tokens, are damped faster once off-policy.

    The paper's objective averages tokens within each sequence, then sequences
    ((1/G) sum_i (1/|y_i|) sum_t): agg mode "seq-mean-token-mean" (configs/algorithm/sapo.yaml).

    Metrics: ppo_kl as the other losses; gate_weight, the mean over valid tokens of 4 s (1 - s), the factor
    the gate multiplies each token's r * A * grad log pi by (1 on policy, -> 0 far off policy).
    """
    if not (tau_pos > 0 and tau_neg > 0):
        raise ValueError(f"sapo needs tau_pos > 0 and tau_neg > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    log_ratio = _log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    s = torch.sigmoid(tau * (ratio - 1.0))
    loss_mat = -(4.0 / tau) * s * advantages
    metrics = {
        "ppo_kl": masked_mean(-log_ratio, response_mask).detach(),
        "gate_weight": masked_mean((4.0 * s * (1.0 - s)).detach(), response_mask),
    }
    return agg.reduce(loss_mat, response_mask), metrics
