"""Automatic recovery: a dead worker or a timed-out call costs the steps since the last checkpoint, not the run.

The driver owns the whole job, so it can do what a person would: tear down every worker
group and placement group, build them again, resume from the latest checkpoint (which is
always a healthy one, see guards.py) and carry on, up to `trainer.max_restarts` times.
What is recoverable is a failure of the machinery (a process that died, a call that never
returned); a whole node that left the cluster is not, since its ranks have nowhere to go; an exception raised by the code itself (bad data, a bug) would fail again the same
way, so it stops the run at once, as do the divergence guards.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.run_errors import RunFailed
from workers.runtime import ClusterShrunk, WorkerError, WorkerTimeout

log = logging.getLogger("baton.recovery")


def recoverable(err: BaseException) -> bool:
    return isinstance(err, WorkerTimeout) or (isinstance(err, WorkerError) and err.process_died and not err.node_lost)


@dataclass
class RecoveryLog:
    restarts: int = 0
    lost_steps: int = 0  # steps run, then thrown away because they came after the last checkpoint
    causes: list[str] = field(default_factory=list)


def run_with_recovery(attempt: Callable[[bool], dict[str, Any]], *, resume: bool, max_restarts: int,
                      progress_of: Callable[[], tuple[int, int]]) -> tuple[dict[str, Any], RecoveryLog]:
    """Call `attempt(resume)` until it returns; after a recoverable failure call it again with resume=True.

    `attempt` builds the workers, trains, and tears the workers down whatever happens.
    `progress_of()` gives (last step reached, step of the latest checkpoint) after a failure,
    from which the lost steps are counted.
    """
    record = RecoveryLog()
    while True:
        try:
            return attempt(resume), record
        except Exception as err:  # noqa: BLE001 - classified below, re-raised unless recoverable
            if isinstance(err, WorkerError) and err.node_lost:  # the same placement cannot be made again
                raise RunFailed(f"{err}; not restarted: the worker groups need that node (or a replacement) back"
                                ) from err
            if isinstance(err, ClusterShrunk):  # after a restart: name the death that started it
                raise RunFailed(f"{record.causes[-1]}; the restart found a node gone: {err}" if record.causes
                                else str(err)) from err
            if not recoverable(err):
                raise
            reached, saved = progress_of()
            record.causes.append(str(err))
            if record.restarts >= max_restarts:
                first = record.causes[0]
                raise RunFailed(f"{err}; gave up after {record.restarts} restart(s) (trainer.max_restarts="
                                f"{max_restarts})" + (f"; the first failure was: {first}" if record.restarts else "")
                                ) from err
            record.restarts += 1
            record.lost_steps += max(reached - saved, 0)
            log.warning("restart %d of %d after: %s; resuming from step %d (%d step(s) to redo)", record.restarts,
                        max_restarts, err, saved, max(reached - saved, 0))
            time.sleep(1.0)  # let Ray reap the old actors before their bundles are asked for again
            resume = True
