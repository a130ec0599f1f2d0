"""Weights that arrive while a rollout engine generates (trainer.mode=async).

The trainer publishes version v+1 without waiting for generation: the rollout worker's weight thread
receives it into a mailbox and the generating thread takes it between two decode steps (built-in engine)
or before its next call (vLLM). Only the generating thread ever writes the engine's weights, so a decode
step never sees half of one version and half of another.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

import torch

Weights = list[tuple[str, torch.Tensor]]
PARTIAL_MODES = ("continue", "restart")


class WeightUpdates(Protocol):
    """What a generating engine asks between decode steps."""

    version: int  # policy version of the weights the engine holds now
    partial_rollout: str  # continue | restart: what becomes of a sequence an update interrupts

    def poll(self) -> bool:
        """Apply weights that arrived since the last call; True if the engine's weights changed."""
        ...

    def ready(self) -> bool:
        """True when a poll() now would change the weights (an engine may first set its running work aside)."""
        ...


class WeightMailbox:
    """One pending version at most: a newer delivery replaces an older one not yet taken."""

    def __init__(self, apply: Callable[[Iterable[tuple[str, torch.Tensor]]], None], *, version: int,
                 partial_rollout: str) -> None:
        if partial_rollout not in PARTIAL_MODES:
            raise ValueError(f"rollout.partial_rollout must be one of {PARTIAL_MODES}, got {partial_rollout!r}")
        self._apply = apply
        self._lock = threading.Lock()
        self._pending: tuple[int, Weights] | None = None
        self._generating = False
        self.version = version
        self.partial_rollout = partial_rollout
        self.updates_applied = 0  # versions taken in the middle of a generate call

    def deliver(self, version: int, weights: Weights) -> bool:
        """From the weight thread. Applied at once when nothing generates (returns True), else left for poll."""
        with self._lock:
            self._pending = (version, weights)
            if self._generating:
                return False
            self._take()
            return True

    def ready(self) -> bool:
        with self._lock:
            return self._pending is not None

    def poll(self) -> bool:
        with self._lock:
            if self._pending is None:
                return False
            self._take()
            self.updates_applied += 1
            return True

    def _take(self) -> None:
        version, weights = self._pending
        self._pending = None
        self._apply(weights)
        self.version = version

    def generating(self) -> "_Generating":
        """`with mailbox.generating():` around a generate call: deliveries wait for poll() meanwhile."""
        return _Generating(self)


class _Generating:
    def __init__(self, mailbox: WeightMailbox) -> None:
        self.mailbox = mailbox

    def __enter__(self) -> WeightMailbox:
        with self.mailbox._lock:
            if self.mailbox._pending is not None:  # arrived between two calls: the whole call uses it
                self.mailbox._take()
            self.mailbox._generating = True
        return self.mailbox

    def __exit__(self, *exc: object) -> None:
        with self.mailbox._lock:
            self.mailbox._generating = False
            if self.mailbox._pending is not None:  # arrived after the last decode step
                self.mailbox._take()
