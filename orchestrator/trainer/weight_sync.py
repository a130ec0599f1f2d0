"""How the actor's weights reach the group that generates, one class per placement.

The loop only calls `sync()` after an update and `group_diffs()` when the post-sync check
fails; where the rollout engines live is decided once, in roles.py.

- colocated: each actor rank streams into its own rollout engine in-process (hybrid engine).
- split: trainer rank 0 broadcasts to the rollout pool over a group of its own; the driver
  starts both halves of each broadcast together and waits for both, so a failure on either
  side surfaces at once instead of after the other side's collective timeout.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

from workers.runtime import PendingCall, WorkerGroup, WorkerTimeout

_POLL_S = 0.5


class WeightSync(Protocol):
    def sync(self, version: int | None = None) -> dict[str, float]: ...

    def group_diffs(self) -> dict[str, float]: ...


def merge_max(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the largest value over ranks: the worst weight difference, the slowest receiver."""
    out: dict[str, float] = {}
    for diffs in per_rank:
        for group, value in diffs.items():
            out[group] = max(out.get(group, 0.0), value)
    return out


class InProcessSync:
    """Colocated placement: the actor group is also the rollout group."""

    def __init__(self, actor: WorkerGroup):
        self.actor = actor

    def sync(self, version: int | None = None) -> dict[str, float]:
        return self.actor.sync_weights()[0]

    def group_diffs(self) -> dict[str, float]:
        return merge_max(self.actor.weight_group_diffs())


def wait_all(calls: list[PendingCall], timeout_s: float) -> list[Any]:
    """Results of calls that run together (two halves of one collective); the first failure raises at once."""
    deadline = time.monotonic() + timeout_s
    pending = dict(enumerate(calls))
    results: dict[int, Any] = {}
    while pending:
        for i, call in list(pending.items()):
            try:
                results[i] = call.result(timeout_s=_POLL_S)
                del pending[i]
            except WorkerTimeout as err:
                if time.monotonic() > deadline:
                    raise WorkerTimeout(call.role, call.method, err.pending_ranks, timeout_s) from None
    return [results[i] for i in range(len(calls))]


class BroadcastSync:
    """Split placement: trainer rank 0 sends, every rollout rank receives (see hybrid_engine/broadcast.py)."""

    def __init__(self, actor: WorkerGroup, rollout: WorkerGroup, timeout_s: float):
        self.actor, self.rollout, self.timeout_s = actor, rollout, timeout_s

    @classmethod
    def connect(cls, actor: WorkerGroup, rollout: WorkerGroup, *, init_timeout_s: float,
                timeout_s: float) -> "BroadcastSync":
        """Rendezvous of trainer rank 0 and all rollout ranks in a new process group."""
        host, port = actor.open_weight_group()
        world_size = 1 + rollout.world_size
        wait_all([actor.call_async("join_weight_group", world_size),
                  rollout.call_async("join_weight_group", host, port, world_size)], init_timeout_s)
        return cls(actor, rollout, timeout_s)

    def _both(self, method: str, **rollout_kwargs) -> tuple[list, list]:
        sent, received = wait_all([self.actor.call_async(method), self.rollout.call_async(method, **rollout_kwargs)],
                                  self.timeout_s)
        return sent, received

    def sync(self, version: int | None = None) -> dict[str, float]:
        sent, received = self._both("sync_weights", version=version)
        return {**sent[0], **merge_max(received)}

    def group_diffs(self) -> dict[str, float]:
        return merge_max(self._both("weight_group_diffs")[1])
