"""How a run ends early, as exceptions the CLI prints in one line (no traceback) and exits non-zero on."""
from __future__ import annotations


class RunEnded(RuntimeError):
    """Base of the deliberate early ends below."""


class TrainingStopped(RunEnded):
    """The divergence/collapse guards stopped the run; names the step, the metric and the last good checkpoint."""

    def __init__(self, step: int, reason: str, last_checkpoint: str | None):
        self.step, self.reason = step, reason
        where = f"the last healthy checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
        super().__init__(f"training stopped at step {step}: {reason}; {where}")


class RunFailed(RunEnded):
    """Automatic recovery gave up: the restart budget is spent. Names the first failure, the root cause."""
