"""Reward registry: the `reward.name` in the Hydra config resolves to a function here.

A new rule reward is one decorated function, never an `if` in the trainer.
Contract of a reward function:
    fn(response_text: str, ground_truth: str, **kwargs) -> float
`kwargs` carry the reward's own settings from the config (e.g. weights) plus
`eos_token`, which every built-in reward requires so it can cut the response at EOS.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Protocol, Sequence

import numpy as np


class RewardFn(Protocol):
    def __call__(self, response_text: str, ground_truth: str, **kwargs: Any) -> float: ...


_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register `fn` under `name`; registering a name twice is an error."""

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} is already registered (by {_REWARDS[name].__module__})")
        _REWARDS[name] = fn
        return fn

    return decorator


def get_reward_fn(name: str) -> RewardFn:
    """Look a reward up by its config name; a typo lists the known names."""
    if name not in _REWARDS:
        close = difflib.get_close_matches(name, list(_REWARDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown reward {name!r}{hint}; known rewards: {sorted(_REWARDS)}")
    return _REWARDS[name]


def list_rewards() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REWARDS)


def score_batch(
    fn_name: str, responses: Sequence[str], ground_truths: Sequence[str], **kwargs: Any
) -> np.ndarray:
    """Score aligned responses and ground truths with one reward; float32 array of shape [N].

    Accepts lists or the numpy object arrays carried in a Batch's non-tensor fields.
    """
    fn = get_reward_fn(fn_name)
    if len(responses) != len(ground_truths):
        raise ValueError(f"score_batch: {len(responses)} responses but {len(ground_truths)} ground truths")
    scores = [float(fn(str(r), str(g), **kwargs)) for r, g in zip(responses, ground_truths)]
    return np.asarray(scores, dtype=np.float32)
