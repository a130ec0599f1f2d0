"""The training engines that share this worker process (and its device) with the policy's rollout engine.

Colocated roles live in one process per rank. While the rollout engine is awake, none of their
training state is needed, so the hybrid engine offloads all of it, not only the policy's: each role
registers its engine here, and a role about to use its engine asks for TRAIN mode first (the policy's
placement switches every registered engine back). Without a local rollout engine (split placement)
nothing is ever offloaded and asking is free.
"""
from __future__ import annotations

from collections.abc import Callable

from hybrid_engine import TrainingState

_engines: list[tuple[str, TrainingState]] = []
_to_train: list[Callable[[], None]] = []


def register_engine(role: str, engine: TrainingState) -> None:
    """A non-policy role's engine, offloaded while this process rolls out."""
    _engines.append((role, engine))


def colocated_engines() -> list[tuple[str, TrainingState]]:
    return list(_engines)


def set_train_mode_switch(switch: Callable[[], None]) -> None:
    """Installed by the policy's local rollout placement: how to get every engine back on the device."""
    _to_train[:] = [switch]


def ensure_train_mode() -> None:
    for switch in _to_train:
        switch()
