"""A tqdm bar over training steps: step, reward, accuracy, seconds/step and ETA.

Off when stdout is not a terminal (tqdm's `disable=None`), so CI logs get the
Tracker's lines instead of thousands of carriage-return redraws.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

from tqdm import tqdm

# seconds/step is always shown inverted (tqdm would flip to steps/s for fast steps).
BAR_FORMAT = "{desc} step {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]"


class TrainingProgress:
    """Progress over `total_steps` training steps, resumable from `initial_step`.

    `disable=True` turns it off; `disable=False` lets tqdm decide, which means
    off when stdout is not a TTY. `mininterval_s` bounds redraw frequency.
    The accuracy shown is the last one seen, since validation runs only every
    few steps.
    """

    def __init__(
        self,
        total_steps: int,
        initial_step: int,
        description: str,
        reward_key: str,
        accuracy_key: str,
        disable: bool,
        mininterval_s: float,
    ) -> None:
        if total_steps < 0 or not 0 <= initial_step <= total_steps:
            raise ValueError(f"need 0 <= initial_step ({initial_step}) <= total_steps ({total_steps})")
        self.reward_key = reward_key
        self.accuracy_key = accuracy_key
        self._last_accuracy: float | None = None
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc=description,
            unit="step",
            bar_format=BAR_FORMAT,
            file=sys.stdout,
            dynamic_ncols=True,
            mininterval=mininterval_s,
            disable=True if disable else None,
        )

    @property
    def enabled(self) -> bool:
        """Whether the bar is actually drawing (False when disabled or not a TTY)."""
        return not self._bar.disable

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        """Move the bar to `step` (the step just finished) and refresh the shown figures."""
        accuracy = metrics.get(self.accuracy_key)
        if accuracy is not None and math.isfinite(float(accuracy)):
            self._last_accuracy = float(accuracy)
        postfix: dict[str, str] = {}
        reward = metrics.get(self.reward_key)
        if reward is not None:
            postfix["reward"] = f"{float(reward):.3f}"
        if self._last_accuracy is not None:
            postfix["acc"] = f"{self._last_accuracy:.1%}"
        if self._bar.disable:
            return
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        """Leave the final bar on screen and release the terminal line."""
        self._bar.close()

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
