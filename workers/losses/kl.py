"""Per-token estimators of KL(pi || pi_ref) from the log-probs of the sampled tokens.

Schulman, "Approximating KL Divergence" (2020): with x = log pi(a) - log pi_ref(a), a ~ pi,
    k1 = x                    unbiased, high variance, can be negative
    k2 = 0.5 * x^2            biased, low variance ("mse")
    k3 = exp(-x) + x - 1      unbiased, low variance, always >= 0 ("low_var_kl")
Used both as a reward penalty (driver, orchestrator/kl_control.py) and as a loss (worker).

As a loss only (KL_LOSS_ESTIMATORS), "k1+" and "k3+": the value of k1 / k3 with the gradient of k2
(straight-through: k2 + sg(k - k2)). Why: what a KL loss should contribute is grad KL(pi || ref). With
a ~ pi (on-policy samples) grad KL = E[x * grad log pi(a)], and grad k2 = x * grad log pi is exactly that
per-sample term, so k2's gradient is unbiased although its value is a biased estimate. k1 used as a loss
gives E[grad log pi] = 0 in expectation (no pull toward the reference at all) and k3 gives
E[(1 - pi_ref/pi) grad log pi], the gradient of KL(ref || pi), the other direction. The "+" variants
keep the unbiased k1/k3 value for logging and the correct gradient for the update (exact for samples of
the current policy, i.e. the first PPO epoch; later epochs reuse older samples, as every loss here does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from workers.losses.aggregation import LossAgg

# k3 contains exp(ref - logp): clamp that log-ratio first so exp stays finite (and its backward
# is not inf * 0 = NaN), then clamp k3 itself as veRL/OpenRLHF do to bound rare outliers.
K3_LOG_RATIO_CLAMP = 20.0
K3_VALUE_CLAMP = 10.0


def _k1(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    return log_prob - ref_log_prob


def _k2(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    return 0.5 * (log_prob - ref_log_prob) ** 2


def _k3(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    neg_x = (ref_log_prob - log_prob).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (torch.exp(neg_x) - neg_x - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)


def _abs(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    return (log_prob - ref_log_prob).abs()


def _k2_gradient(value: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Estimator with the forward value of `value` and the gradient of k2 (see module docstring)."""

    def fn(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
        k2 = _k2(log_prob, ref_log_prob)
        return k2 + (value(log_prob, ref_log_prob) - k2).detach()

    return fn


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "mse": _k2,
    "k3": _k3,
    "low_var_kl": _k3,
    "abs": _abs,
}

# actor.kl_loss_type: the estimators plus the straight-through ones, which only mean something under a
# gradient (as a reward penalty, algorithm.kl_penalty, they would be k1 / k3 under another name).
KL_LOSS_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    **KL_ESTIMATORS,
    "k1+": _k2_gradient(_k1),
    "k3+": _k2_gradient(_k3),
}


def _lookup(kind: str, table: dict[str, Callable[[Tensor, Tensor], Tensor]]) -> Callable[[Tensor, Tensor], Tensor]:
    try:
        return table[kind]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown KL estimator {kind!r}; known: {known}") from None


def kl_penalty(log_prob: Tensor, ref_log_prob: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate [B, R] of the named kind (see module docstring); KL_ESTIMATORS only."""
    return _lookup(kind, KL_ESTIMATORS)(log_prob, ref_log_prob)


def kl_loss(
    log_prob: Tensor,
    ref_log_prob: Tensor,
    response_mask: Tensor,
    *,
    kind: str,
    agg: LossAgg,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL to the reference policy as a loss term, not a reward penalty (GRPO, Shao et al. 2024: k3).

    kind: any of KL_LOSS_ESTIMATORS, including the straight-through "k1+" / "k3+".
    """
    loss = agg.reduce(_lookup(kind, KL_LOSS_ESTIMATORS)(log_prob, ref_log_prob), response_mask)
    return loss, {"kl_loss": loss.detach()}
