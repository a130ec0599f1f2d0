"""Per-token estimators of KL(pi || pi_ref) from the log-probs of the sampled tokens.

Schulman, "Approximating KL Divergence" (2020): with x = log pi(a) - log pi_ref(a), a ~ pi,
    k1 = x                    unbiased, high variance, can be negative
    k2 = 0.5 * x^2            biased, low variance ("mse")
    k3 = exp(-x) + x - 1      unbiased, low variance, always >= 0 ("low_var_kl")
Used both as a reward penalty (driver, orchestrator/kl_control.py) and as a loss (worker).
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


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "mse": _k2,
    "k3": _k3,
    "low_var_kl": _k3,
    "abs": _abs,
}


def kl_penalty(log_prob: Tensor, ref_log_prob: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate [B, R] of the named kind (see module docstring)."""
    try:
        fn = KL_ESTIMATORS[kind]
    except KeyError:
        known = ", ".join(sorted(KL_ESTIMATORS))
        raise ValueError(f"unknown KL estimator {kind!r}; known: {known}") from None
    return fn(log_prob, ref_log_prob)


def kl_loss(
    log_prob: Tensor,
    ref_log_prob: Tensor,
    response_mask: Tensor,
    *,
    kind: str,
    agg: LossAgg,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL to the reference policy as a loss term, not a reward penalty (GRPO, Shao et al. 2024: k3)."""
    loss = agg.reduce(kl_penalty(log_prob, ref_log_prob, kind), response_mask)
    return loss, {"kl_loss": loss.detach()}
