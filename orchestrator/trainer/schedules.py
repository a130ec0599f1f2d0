"""When the rollout of a step's batch runs, relative to training: `trainer.mode`.

- `sync`: generate the batch, then train on it. Every sample comes from the weights being trained.
- `one_step_off`: while the trainer works on step k's batch, the rollout pool (split placement) is
  already generating step k+1's, with the weights of step k-1. Generation leaves the critical path
  whenever it takes no longer than training; each trained sample is exactly one policy version old.
  The loss uses the behaviour policy's log-probs (`rollout_log_probs`, recorded by the rollout
  engine): under `rollout_correction.mode=auto` as PPO's pi_old while the engines are verified
  equal, else with the trainer's recomputed pi_old and truncated importance weights (see
  orchestrator/rollout_correction.py).

Exactly once: the next batch is finished (generated and scored) before the weight sync, so when a
checkpoint is written it is complete, and it is saved with the checkpoint, the prompt stream
positioned after it. A resume trains on that very batch next: no prompt is lost or repeated, and
the resumed run is the run that was interrupted.

Every batch carries `policy_version` per row (the number of updates behind the weights that
generated it); the loop logs staleness from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from orchestrator.trainer.async_schedule import AsyncSchedule
from orchestrator.trainer.stream_schedule import StreamSchedule
from workers.batch import Batch
from workers.runtime import PendingCall

if TYPE_CHECKING:
    from orchestrator.trainer.loop import RLTrainer

NEXT_BATCH_FILE = "next_batch.pt"


class RolloutSchedule(Protocol):
    def take(self, trainer: "RLTrainer", m: dict[str, float]) -> Batch: ...
    def before_sync(self, trainer: "RLTrainer", m: dict[str, float]) -> None: ...
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path) -> None: ...


class SyncSchedule:
    """Generate, then train. A one_step_off checkpoint's saved batch is trained first (it holds prompts
    the stream has already moved past), so switching modes on resume still trains each prompt once."""

    def __init__(self) -> None:
        self.ready: Batch | None = None

    def take(self, trainer: "RLTrainer", m: dict[str, float]) -> Batch:
        if self.ready is None:
            return trainer.generate(m)
        batch, self.ready = self.ready, None
        trainer.rollout_metrics(batch, m)
        return batch

    def before_sync(self, trainer: "RLTrainer", m: dict[str, float]) -> None:
        return None

    def save(self, directory: Path) -> None:
        return None

    def load(self, directory: Path) -> None:
        self.ready = load_next_batch(directory)


class OneStepOffSchedule:
    """Step k trains on the batch generated during step k-1 and starts generating step k+1's."""

    def __init__(self) -> None:
        self.ready: Batch | None = None  # generated and scored, not yet trained on
        self.pending: tuple[PendingCall, Batch, int] | None = None  # (generate call, its prompts, version)

    def take(self, trainer: "RLTrainer", m: dict[str, float]) -> Batch:
        if self.ready is None:  # the first step (of a run, or after a resume without one) has nothing ready
            batch = trainer.generate(m)
        else:
            batch, self.ready = self.ready, None
            trainer.rollout_metrics(batch, m)
            m["async/overlapped"] = 1.0  # generated during the previous step: no generate throughput to report
        if trainer.step < trainer.cfg.trainer.total_steps:  # the last step starts nothing it would not train on
            prompts, params = trainer.draw_prompts(trainer.step + 1, 1)
            call = trainer.rollout.call_async("generate", prompts, params)
            self.pending = (call, prompts, trainer.policy_version)
        return batch

    def before_sync(self, trainer: "RLTrainer", m: dict[str, float]) -> None:
        """Finish the generation started by `take` before new weights go to the rollout pool."""
        if self.pending is None:
            return
        call, prompts, version = self.pending
        self.pending = None
        from orchestrator.tracking import phase_timer

        with phase_timer("wait_rollout", m):  # the part of generation training did not hide
            out = call.result()
        self.ready = trainer.finish_rollout(prompts, out, version)

    def save(self, directory: Path) -> None:
        if self.ready is not None:
            torch.save(self.ready, directory / NEXT_BATCH_FILE)

    def load(self, directory: Path) -> None:
        self.ready = load_next_batch(directory)
        self.pending = None


def load_next_batch(directory: Path) -> Batch | None:
    path = directory / NEXT_BATCH_FILE
    return torch.load(path, weights_only=False) if path.is_file() else None


SCHEDULES = {"sync": SyncSchedule, "one_step_off": OneStepOffSchedule, "async": AsyncSchedule}


def make_schedule(mode: str, stream: bool = False) -> RolloutSchedule:
    """rollout.stream swaps async's queued generate calls for request-level generation (stream_schedule.py)."""
    return StreamSchedule() if stream and mode == "async" else SCHEDULES[mode]()
