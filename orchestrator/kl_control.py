"""KL-to-reference as a per-token reward penalty, with fixed or adaptive coefficient (driver side).

r_t = score_t - beta * KL_t (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2), with KL_t
one of the per-token estimators in workers/losses/kl.py. For KL as a *loss* instead, see kl_loss there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from workers.losses.kl import kl_penalty
from workers.losses.masked import masked_mean
from workers.losses.registry import bind_params, checked_binding

# Ziegler et al. 2019: the proportional error is clipped to [-0.2, 0.2] so one noisy
# KL measurement cannot move beta by more than 20% * n_steps / horizon. Part of the published rule.
ZIEGLER_ERROR_CLIP = 0.2


class FixedKLController:
    """Constant beta."""

    def __init__(self, *, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards target_kl (Ziegler et al. 2019):
    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    kl_coef is the initial beta.
    """

    def __init__(self, *, kl_coef: float, target_kl: float, horizon: float) -> None:
        if kl_coef < 0 or target_kl <= 0 or horizon <= 0:
            raise ValueError(
                f"need kl_coef >= 0, target_kl > 0, horizon > 0; got {kl_coef}, {target_kl}, {horizon}"
            )
        self.value = float(kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """n_steps: samples (responses) seen since the last update, the unit of horizon."""
        error = min(max(current_kl / self.target_kl - 1.0, -ZIEGLER_ERROR_CLIP), ZIEGLER_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon


KLController = FixedKLController | AdaptiveKLController

# controller -> (class, its constructor arguments bound to keys of algorithm.kl_ctrl)
KL_CONTROLLERS: dict[str, tuple[Callable[..., KLController], dict[str, str]]] = {
    "fixed": (FixedKLController, checked_binding(FixedKLController.__init__, {"kl_coef": "kl_coef"}, supplied=())),
    "adaptive": (AdaptiveKLController, checked_binding(
        AdaptiveKLController.__init__, {"kl_coef": "kl_coef", "target_kl": "target_kl", "horizon": "horizon"},
        supplied=())),
}


def make_kl_controller(kind: str, available: Mapping[str, Any]) -> KLController:
    """Build controller `kind` ("fixed": kl_coef; "adaptive": kl_coef, target_kl, horizon) from one config
    section (algorithm.kl_ctrl), through its explicit binding; the section's other keys are not read.
    """
    try:
        cls, binding = KL_CONTROLLERS[kind]
    except KeyError:
        known = ", ".join(sorted(KL_CONTROLLERS))
        raise ValueError(f"unknown KL controller {kind!r}; known: {known}") from None
    return cls(**bind_params(binding, available, what=f"KL controller {kind!r}"))


def apply_kl_penalty(
    token_level_scores: Tensor,
    log_prob: Tensor,
    ref_log_prob: Tensor,
    response_mask: Tensor,
    controller: KLController,
    kind: str,
) -> tuple[Tensor, dict[str, float]]:
    """token_level_rewards = scores - beta * KL_t on valid tokens, and the measured KL.

    Pure: the controller is only read. The trainer then calls
    controller.update(metrics["kl"], n_steps=batch_size) once per step.
    metrics["kl"] is the batch mean of each sequence's mean per-token KL.
    """
    valid = response_mask.bool()
    kl = kl_penalty(log_prob, ref_log_prob, kind).to(token_level_scores.dtype)
    kl = torch.where(valid, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    rewards = token_level_scores - controller.value * kl
    seq_kl = masked_mean(kl, valid, dim=-1)
    has_tokens = valid.any(dim=-1).to(seq_kl.dtype)
    current_kl = float((seq_kl.sum() / has_tokens.sum().clamp(min=1.0)).item())
    return rewards, {"kl": current_kl, "kl_coef": float(controller.value)}


__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KL_CONTROLLERS",
    "KLController",
    "apply_kl_penalty",
    "make_kl_controller",
]
