"""The one thing the hybrid engine needs from a rollout engine, as a structural type.

Defined here rather than imported from `workers.rollout.base` because the hybrid engine
sits below `workers` in the layering and must not know about batches or generation.
Any engine with these three calls (the built-in torch engine, a vLLM adapter, a test
double) can share a device with training.
"""
from __future__ import annotations

import inspect
from typing import Iterable, Protocol, runtime_checkable

import torch


@runtime_checkable
class SleepableRollout(Protocol):
    """A rollout engine that can free its device memory and take new weights in place.

    `wake_up` may accept `tags` (vLLM style: "weights", "kv_cache") to restore only part of
    its memory; the hybrid engine detects this with `accepts_wake_up_tags`.
    """

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...


WEIGHTS_TAG = "weights"
KV_CACHE_TAG = "kv_cache"


def accepts_wake_up_tags(rollout: SleepableRollout) -> bool:
    """True when `rollout.wake_up` takes a `tags` argument (so weights can be woken before the KV cache)."""
    try:
        params = inspect.signature(rollout.wake_up).parameters
    except (TypeError, ValueError):  # builtins or C extensions without a signature
        return False
    return "tags" in params
