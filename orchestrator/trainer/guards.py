"""Divergence and collapse guards: a run that has stopped learning stops, before it is checkpointed.

Read from each step's metrics on the driver (no extra worker calls):
- non-finite: any metric that is NaN or inf, or an optimizer step the engine skipped for a
  non-finite gradient norm. `trainer.on_nonfinite=stop` stops at the first such step;
  `skip` lets the engines drop those updates (they already do) and stops only after
  `trainer.max_skipped_steps` of them in a row, so one bad batch does not end a long run.
- weights: a non-finite weight norm after an update stops the run in either mode (nothing
  can recover from it).
- collapse: mean token entropy under `trainer.collapse.entropy` together with |mean reward|
  at most `trainer.collapse.reward`, for `trainer.collapse.steps` steps in a row: the policy
  has become deterministic and earns nothing (what `lr=10` does).

A step is healthy when none of these fired; only healthy steps are checkpointed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

WEIGHT_NORM_KEYS = ("actor/param_norm", "critic/param_norm")
SKIP_KEYS = ("actor/step_skipped", "critic/step_skipped")
ENTROPY_KEY = "actor/entropy"
REWARD_KEY = "reward/mean"


@dataclass(frozen=True)
class Verdict:
    healthy: bool  # nothing fired this step: safe to checkpoint
    stop: str | None  # why the run must stop now, or None


class HealthGuard:
    def __init__(self, trainer_cfg: DictConfig):
        self.on_nonfinite = trainer_cfg.on_nonfinite
        self.max_skipped = trainer_cfg.max_skipped_steps
        c = trainer_cfg.collapse
        self.collapse_steps, self.collapse_entropy, self.collapse_reward = c.steps, c.entropy, c.reward
        self.skipped_in_a_row = 0
        self.collapsed_in_a_row = 0
        self.skipped_total = 0

    def state(self) -> dict[str, int]:
        return {"skipped_in_a_row": self.skipped_in_a_row, "collapsed_in_a_row": self.collapsed_in_a_row,
                "skipped_total": self.skipped_total}

    def restore(self, state: dict[str, int]) -> None:
        self.skipped_in_a_row = state["skipped_in_a_row"]
        self.collapsed_in_a_row = state["collapsed_in_a_row"]
        self.skipped_total = state["skipped_total"]

    def check(self, metrics: dict[str, float]) -> Verdict:
        """Update the streaks with this step's metrics; says whether to stop and whether the step is healthy."""
        for key in WEIGHT_NORM_KEYS:
            if key in metrics and not math.isfinite(metrics[key]):
                return Verdict(False, f"{key}={metrics[key]}: the weights are no longer finite")
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        skipped = [k for k in SKIP_KEYS if metrics.get(k, 0.0) > 0]
        if bad or skipped:
            self.skipped_in_a_row += 1
            self.skipped_total += 1
            what = (f"non-finite {', '.join(bad[:4])}" + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
                    if bad else f"{', '.join(skipped)} > 0 (non-finite gradient norm)")
            if self.on_nonfinite == "stop":
                return Verdict(False, f"{what} (trainer.on_nonfinite=stop)")
            if self.skipped_in_a_row >= self.max_skipped:
                return Verdict(False, f"{what}; {self.skipped_in_a_row} steps in a row had non-finite values "
                                      f"(trainer.max_skipped_steps={self.max_skipped})")
            return Verdict(False, None)
        self.skipped_in_a_row = 0
        entropy, reward = metrics.get(ENTROPY_KEY), metrics.get(REWARD_KEY)
        if self.collapse_steps and entropy is not None and reward is not None \
                and entropy < self.collapse_entropy and abs(reward) <= self.collapse_reward:
            self.collapsed_in_a_row += 1
            if self.collapsed_in_a_row >= self.collapse_steps:
                return Verdict(False, f"policy collapsed: {ENTROPY_KEY}={entropy:.3g} < trainer.collapse.entropy="
                                      f"{self.collapse_entropy} and {REWARD_KEY}={reward:.3g} for "
                                      f"{self.collapsed_in_a_row} steps in a row (trainer.collapse.steps)")
            return Verdict(False, None)
        self.collapsed_in_a_row = 0
        return Verdict(True, None)
