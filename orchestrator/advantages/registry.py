"""Advantage-estimator registry keyed by the config name (`algorithm.adv_estimator.name`).

Each entry carries what the trainer must provision for it (a critic, a greedy baseline
rollout, several samples per prompt), so the trainer reads flags instead of branching
on algorithm names. Every estimator has the signature
    fn(data: AdvantageInputs, **params) -> (advantages [B, R], returns [B, R])
with params its keyword-only hyperparameters (gamma, lam, eps, ...), all explicit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from orchestrator.advantages.inputs import AdvantageInputs
from workers.losses.registry import bind_params, checked_binding

AdvantageFn = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator and what it needs from the rest of the step.

    needs_critic: values must be computed (critic worker group, value loss).
    needs_baseline_rollout: a greedy rollout per prompt must be scored into baseline_scores.
    uses_groups: advantages compare samples of the same prompt (rollout.n > 1 makes sense).
    needs_teacher: a frozen teacher model must score the samples into teacher_log_probs (on-policy distillation).
    on_policy_only: the estimator's derivation assumes samples of the current policy: one optimizer step per
        batch (actor.ppo_epochs=1, actor.ppo_mini_batch_size=data.train_batch_size), checked by validation.
    """

    name: str
    fn: AdvantageFn
    needs_critic: bool
    needs_baseline_rollout: bool
    uses_groups: bool
    params: dict[str, str]  # argument -> key of the algorithm config section
    needs_teacher: bool = False
    on_policy_only: bool = False


_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(
    name: str, *, needs_critic: bool, needs_baseline_rollout: bool, uses_groups: bool, params: Mapping[str, str],
    needs_teacher: bool = False, on_policy_only: bool = False,
) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: make `fn` available as `name` in the config, with its requirement flags; `params` binds its
    hyperparameters to keys of the algorithm section (argument -> key), checked here."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ESTIMATORS[name] = AdvantageEstimator(name, fn, needs_critic, needs_baseline_rollout, uses_groups,
                                               checked_binding(fn, params, supplied=()), needs_teacher,
                                               on_policy_only)
        return fn

    return deco


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The entry registered as `name`; a typo raises an error listing the known names."""
    try:
        return _ESTIMATORS[name]
    except KeyError:
        known = ", ".join(list_advantages())
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


def get_advantage_fn(name: str) -> AdvantageFn:
    return get_advantage_estimator(name).fn


def list_advantages() -> list[str]:
    return sorted(_ESTIMATORS)


def advantage_params(name: str, available: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of estimator `name`, read from `available` (cfg.algorithm) through its binding."""
    return bind_params(get_advantage_estimator(name).params, available, what=f"advantage estimator {name!r}")


def compute_advantage(name: str, data: AdvantageInputs, params: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """Look up `name` and run it: the one call the trainer makes."""
    return get_advantage_fn(name)(data, **params)
