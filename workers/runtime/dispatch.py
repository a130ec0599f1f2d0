"""Dispatch modes: how a driver call fans out to the ranks of a group and how results come back.

A worker method declares its mode with `@register(...)`; the driver-side group reads it and
does the splitting and collecting, so the driver calls `group.compute_log_prob(batch)` and
gets one Batch back.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)
DISPATCH_ATTR = "_baton_dispatch"


class Dispatch(enum.Enum):
    ONE_TO_ALL = "one_to_all"  # same arguments to every rank; a list of per-rank results
    RANK_ZERO = "rank_zero"  # only rank 0 runs it; its result
    DP = "dp"  # Batch arguments split across ranks (padded), results concatenated in order
    DP_MESH = "dp_mesh"  # split across data-parallel groups; one collect rank per group returns


@dataclass(frozen=True)
class MethodSpec:
    dispatch: Dispatch
    blocking: bool
    concurrency_group: str | None = None  # runs in this Ray concurrency group where the host has it


def register(dispatch: Dispatch = Dispatch.ONE_TO_ALL, blocking: bool = True,
             concurrency_group: str | None = None) -> Callable[[F], F]:
    """Mark a worker method as callable from the driver with the given dispatch mode.

    concurrency_group: on hosts spawned with that group (spawn_colocated(concurrency_groups=...)) the method
    runs in its own thread, beside a long call of the default group (a weight update during generation);
    elsewhere it queues behind the default group's calls as every method does.
    """

    def wrap(fn: F) -> F:
        setattr(fn, DISPATCH_ATTR, MethodSpec(dispatch, blocking, concurrency_group))
        return fn

    return wrap


def registered_methods(cls: type) -> dict[str, MethodSpec]:
    """All `@register`ed methods of a worker class (inherited ones included)."""
    out: dict[str, MethodSpec] = {}
    for name in dir(cls):
        spec = getattr(getattr(cls, name, None), DISPATCH_ATTR, None)
        if isinstance(spec, MethodSpec):
            out[name] = spec
    return out
