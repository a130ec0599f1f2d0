"""Policy-loss registry keyed by the names the Hydra config uses (`actor.policy_loss.name`).

A new policy objective is a function registered here plus a YAML file; the worker
looks it up by name and never branches on the algorithm.

Every registered function has the signature
    fn(log_prob, old_log_prob, advantages, response_mask, *, agg: LossAgg, **params)
        -> (loss: scalar Tensor, metrics: dict[str, Tensor])
where all tensors are [B, R] and params are that loss's keyword-only hyperparameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from torch import Tensor

from workers.losses.aggregation import LossAgg


class PolicyLossFn(Protocol):
    def __call__(
        self,
        log_prob: Tensor,
        old_log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        *,
        agg: LossAgg,
        **params: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


_POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: make `fn` available as `name` in the config."""

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        if name in _POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        _POLICY_LOSSES[name] = fn
        return fn

    return deco


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The loss registered as `name`; a typo raises an error listing the known names."""
    try:
        return _POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; known: {', '.join(list_policy_losses())}") from None


def list_policy_losses() -> list[str]:
    return sorted(_POLICY_LOSSES)


def select_params(
    fn: Callable[..., Any], available: Mapping[str, Any], *, what: str, supplied: tuple[str, ...]
) -> dict[str, Any]:
    """The keyword-only hyperparameters `fn` declares, taken from a config section by name.

    Why: one config section (e.g. actor.policy_loss) serves several losses, each using a subset,
    so the caller needs no per-algorithm branch. Keys `fn` does not take are ignored (the
    structured config schema already rejects misspelt keys); a key it needs but the section
    lacks raises, naming it. `supplied` lists keyword args the caller passes itself ("agg").
    """
    wanted = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in supplied
    ]
    missing = [k for k in wanted if k not in available]
    if missing:
        raise ValueError(f"{what} needs params {missing}: absent or unset in {sorted(available)}")
    return {k: available[k] for k in wanted}


def policy_loss_params(name: str, available: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of policy loss `name`, picked from `available` (e.g. actor.policy_loss)."""
    return select_params(get_policy_loss_fn(name), available, what=f"policy loss {name!r}", supplied=("agg",))
