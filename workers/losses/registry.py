"""Policy-loss registry keyed by the names the Hydra config uses (`actor.policy_loss.name`).

A new policy objective is a function registered here plus a YAML file; the worker
looks it up by name and never branches on the algorithm.

Every registered function has the signature
    fn(log_prob, old_log_prob, advantages, response_mask, *, agg: LossAgg, **params)
        -> (loss: scalar Tensor, metrics: dict[str, Tensor])
where all tensors are [B, R] and params are that loss's keyword-only hyperparameters, each bound
explicitly to a config key at registration.
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


_POLICY_LOSSES: dict[str, tuple[PolicyLossFn, dict[str, str]]] = {}


def checked_binding(fn: Callable[..., Any], params: Mapping[str, str], *, supplied: tuple[str, ...]) -> dict[str, str]:
    """`params` maps each keyword-only hyperparameter of `fn` to the config key it is read from.

    Checked once, at registration: a renamed argument or key fails at import instead of being
    silently re-bound (or dropped) the way binding by argument name would. `supplied` lists the
    keyword arguments the caller passes itself ("agg").
    """
    declared = {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in supplied}
    if set(params) != declared:
        raise TypeError(f"{fn.__name__}: the binding names {sorted(params)} but the function takes {sorted(declared)}")
    return dict(params)


def bind_params(binding: Mapping[str, str], section: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """{argument: section[config key]} for a checked binding; a key the section lacks raises, naming it."""
    missing = sorted(key for key in binding.values() if key not in section)
    if missing:
        raise ValueError(f"{what} needs config keys {missing}: absent or unset in {sorted(section)}")
    return {arg: section[key] for arg, key in binding.items()}


def register_policy_loss(name: str, *, params: Mapping[str, str]) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: make `fn` available as `name` in the config; `params` binds its hyperparameters to keys of
    actor.policy_loss (argument -> key)."""

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        if name in _POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        _POLICY_LOSSES[name] = (fn, checked_binding(fn, params, supplied=("agg",)))
        return fn

    return deco


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The loss registered as `name`; a typo raises an error listing the known names."""
    try:
        return _POLICY_LOSSES[name][0]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; known: {', '.join(list_policy_losses())}") from None


def list_policy_losses() -> list[str]:
    return sorted(_POLICY_LOSSES)


def policy_loss_params(name: str, available: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of policy loss `name`, read from `available` (actor.policy_loss) through its binding."""
    get_policy_loss_fn(name)
    return bind_params(_POLICY_LOSSES[name][1], available, what=f"policy loss {name!r}")
