r"""The end-of-run summary a person reads first: did it learn, how long, how big.

`summary.json` keys (schema_version 3; all floats are plain JSON numbers,
missing figures are null):

| key                       | type          | meaning                                                          |
|---------------------------|---------------|------------------------------------------------------------------|
| schema_version            | int           | version of this key set; bumped when a key changes meaning       |
| experiment_name           | str           | the run's experiment name                                        |
| steps                     | int           | training steps run in this session                               |
| wall_time_s               | float         | seconds the training loop ran in this session                    |
| seconds_per_step          | float \| null | wall_time_s / steps (null when steps is 0)                       |
| accuracy_key              | str           | metric read as test accuracy (a 0-1 fraction), e.g. val/accuracy |
| accuracy_start            | float \| null | first logged value of accuracy_key                               |
| accuracy_end              | float \| null | last logged value of accuracy_key                                |
| accuracy_start_step       | int \| null   | step of accuracy_start                                           |
| accuracy_end_step         | int \| null   | step of accuracy_end                                             |
| accuracy_change_points    | float \| null | (end - start) * 100: change in percentage points                 |
| reward_key                | str           | metric read as reward, e.g. reward/mean                          |
| reward_start              | float \| null | first logged value of reward_key                                 |
| reward_end                | float \| null | last logged value of reward_key                                  |
| reward_start_step         | int \| null   | step of reward_start                                             |
| reward_end_step           | int \| null   | step of reward_end                                               |
| reward_change             | float \| null | reward_end - reward_start, in reward units                       |
| phase_mean_s              | {str: float}  | phase -> mean seconds over the records that timed it             |
| perf_mean                 | {str: float}  | "tokens_per_s/<phase>" and "mfu/<phase>" -> mean over the steps  |
|                           |               | (orchestrator/tracking/flops.py says what is counted)            |
| peak_memory_driver_gib    | float         | driver process peak RSS, GiB                                     |
| peak_memory_workers_gib   | float         | sum of the worker processes' peak RSS, GiB                       |
| peak_memory_total_gib     | float         | driver + workers: upper bound on the joint peak, GiB             |
| peak_memory_by_worker_gib | {str: float}  | process label -> that process's peak RSS, GiB                    |
| paths.checkpoints         | str \| null   | checkpoint directory                                             |
| paths.metrics_jsonl       | str \| null   | per-step metrics log (one JSON object per line)                  |
| paths.tensorboard         | str \| null   | TensorBoard log directory                                        |
| paths.plot                | str \| null   | PNG of the training curves                                       |
| status                    | str           | completed \| stopped (divergence guards) \| failed (restarts spent) |
| status_message            | str \| null   | why it stopped or failed                                         |
| restarts                  | int           | automatic recoveries from a dead worker or timed-out call        |
| lost_steps                | int           | steps redone after those recoveries (run after the last checkpoint) |
| skipped_steps             | int           | steps whose update was dropped for non-finite values             |

"Start" and "end" are the first and last non-null values in the metrics log in
file order, so a resumed run that appended to the same log compares against
the original start.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.tracking.memory import PeakMemory, bytes_to_gib
from orchestrator.tracking.timer import TIMING_PREFIX

PERF_PREFIX = "perf/"
from orchestrator.tracking.tracker import read_metrics_jsonl

SCHEMA_VERSION = 3
# Float noise such as 30.000000000000004 is cut at this many decimals in derived changes.
CHANGE_DECIMALS = 6


@dataclass(frozen=True)
class OutputPaths:
    """Where the run left its artefacts; None for any the run did not produce."""

    checkpoints: Path | None
    metrics_jsonl: Path | None
    tensorboard: Path | None
    plot: Path | None

    def to_dict(self) -> dict[str, str | None]:
        """Paths as strings for JSON."""
        return {name: (None if value is None else str(value)) for name, value in vars(self).items()}


@dataclass(frozen=True)
class RunHealth:
    """How the run ended and what it survived (see the guards and recovery in orchestrator/trainer)."""

    status: str = "completed"
    message: str | None = None
    restarts: int = 0
    lost_steps: int = 0
    skipped_steps: int = 0


@dataclass(frozen=True)
class MetricSpan:
    """First and last logged value of one metric, with the steps they came from."""

    key: str
    start: float | None
    end: float | None
    start_step: int | None
    end_step: int | None

    @classmethod
    def from_records(cls, key: str, records: Sequence[Mapping[str, Any]]) -> MetricSpan:
        """Span of `key` over log records; all None when the key was never logged as a number."""
        seen = [(int(r["step"]), float(r[key])) for r in records if r.get(key) is not None]
        if not seen:
            return cls(key=key, start=None, end=None, start_step=None, end_step=None)
        return cls(key=key, start=seen[0][1], end=seen[-1][1], start_step=seen[0][0], end_step=seen[-1][0])

    @property
    def change(self) -> float | None:
        """end - start, or None when either is missing."""
        if self.start is None or self.end is None:
            return None
        return round(self.end - self.start, CHANGE_DECIMALS)


def phase_means(records: Sequence[Mapping[str, Any]], prefix: str = TIMING_PREFIX) -> dict[str, float]:
    """Mean of every `<prefix><name>` over the records that carry it as a number, keyed by name."""
    totals: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix) and value is not None and math.isfinite(float(value)):
                totals.setdefault(key[len(prefix) :], []).append(float(value))
    return {name: sum(values) / len(values) for name, values in totals.items()}


@dataclass(frozen=True)
class RunSummary:
    """Everything `summary.json` and the closing table report; see the module docstring."""

    experiment_name: str
    steps: int
    wall_time_s: float
    accuracy: MetricSpan
    reward: MetricSpan
    phase_mean_s: Mapping[str, float]
    peak_memory: PeakMemory
    paths: OutputPaths
    health: RunHealth = RunHealth()
    perf_mean: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        experiment_name: str,
        steps: int,
        wall_time_s: float,
        accuracy_key: str,
        reward_key: str,
        peak_memory: PeakMemory,
        paths: OutputPaths,
        health: RunHealth = RunHealth(),
    ) -> RunSummary:
        """Build from metrics records (as logged) plus the figures only the trainer knows."""
        return cls(
            experiment_name=experiment_name,
            steps=steps,
            wall_time_s=wall_time_s,
            accuracy=MetricSpan.from_records(accuracy_key, records),
            reward=MetricSpan.from_records(reward_key, records),
            phase_mean_s=phase_means(records),
            peak_memory=peak_memory,
            paths=paths,
            health=health,
            perf_mean=phase_means(records, PERF_PREFIX),
        )

    @classmethod
    def from_metrics_jsonl(
        cls,
        metrics_jsonl: Path,
        experiment_name: str,
        steps: int,
        wall_time_s: float,
        accuracy_key: str,
        reward_key: str,
        peak_memory: PeakMemory,
        paths: OutputPaths,
        health: RunHealth = RunHealth(),
    ) -> RunSummary:
        """Build from the Tracker's `metrics.jsonl` (the usual path at the end of `fit`)."""
        return cls.from_records(
            read_metrics_jsonl(metrics_jsonl),
            experiment_name=experiment_name,
            steps=steps,
            wall_time_s=wall_time_s,
            accuracy_key=accuracy_key,
            reward_key=reward_key,
            peak_memory=peak_memory,
            paths=paths,
            health=health,
        )

    @property
    def seconds_per_step(self) -> float | None:
        """Wall time per training step; None before any step ran."""
        return self.wall_time_s / self.steps if self.steps > 0 else None

    @property
    def accuracy_change_points(self) -> float | None:
        """Accuracy change in percentage points (accuracy is a 0-1 fraction)."""
        change = self.accuracy.change
        return None if change is None else round(change * 100.0, CHANGE_DECIMALS)

    def to_dict(self) -> dict[str, Any]:
        """The `summary.json` object, keys as documented in the module docstring."""
        memory = self.peak_memory
        return {
            "schema_version": SCHEMA_VERSION,
            "experiment_name": self.experiment_name,
            "steps": self.steps,
            "wall_time_s": self.wall_time_s,
            "seconds_per_step": self.seconds_per_step,
            "accuracy_key": self.accuracy.key,
            "accuracy_start": self.accuracy.start,
            "accuracy_end": self.accuracy.end,
            "accuracy_start_step": self.accuracy.start_step,
            "accuracy_end_step": self.accuracy.end_step,
            "accuracy_change_points": self.accuracy_change_points,
            "reward_key": self.reward.key,
            "reward_start": self.reward.start,
            "reward_end": self.reward.end,
            "reward_start_step": self.reward.start_step,
            "reward_end_step": self.reward.end_step,
            "reward_change": self.reward.change,
            "phase_mean_s": dict(self.phase_mean_s),
            "perf_mean": dict(self.perf_mean),
            "peak_memory_driver_gib": bytes_to_gib(memory.driver_bytes),
            "peak_memory_workers_gib": bytes_to_gib(memory.workers_bytes),
            "peak_memory_total_gib": bytes_to_gib(memory.total_bytes),
            "peak_memory_by_worker_gib": {name: bytes_to_gib(b) for name, b in memory.worker_bytes.items()},
            "paths": self.paths.to_dict(),
            "status": self.health.status,
            "status_message": self.health.message,
            "restarts": self.health.restarts,
            "lost_steps": self.health.lost_steps,
            "skipped_steps": self.health.skipped_steps,
        }

    def write_json(self, path: Path) -> Path:
        """Write `summary.json` atomically (temp file + rename) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def _perf_text(self, phase: str) -> str:
        rate, mfu = self.perf_mean.get(f"tokens_per_s/{phase}"), self.perf_mean.get(f"mfu/{phase}")
        return f"{_num(rate, ',.0f')} tok/s" + ("" if mfu is None else f", MFU {100 * mfu:.1f}%")

    def render_table(self) -> str:
        """A plain-ASCII aligned table for the terminal and CI logs (no colour, no box glyphs)."""
        memory = self.peak_memory
        per_worker = memory.worker_bytes.values()
        largest = f", largest {bytes_to_gib(max(per_worker)):.2f}" if per_worker else ""
        sections: list[tuple[str, list[tuple[str, str]]]] = [
            (
                f"Run summary: {self.experiment_name}",
                [
                    (f"accuracy ({self.accuracy.key})", _span_text(self.accuracy, percent=True)),
                    (f"reward ({self.reward.key})", _span_text(self.reward, percent=False)),
                    ("steps", str(self.steps)),
                    ("wall time", f"{_clock(self.wall_time_s)} ({self.wall_time_s:.1f} s)"),
                    ("seconds / step", _num(self.seconds_per_step, ".2f")),
                    ("status", self.health.status),
                    ("restarts (steps redone)", f"{self.health.restarts} ({self.health.lost_steps})"),
                    ("skipped steps (non-finite)", str(self.health.skipped_steps)),
                ],
            ),
            (
                "Mean seconds per phase",
                [(phase, f"{seconds:.3f}") for phase, seconds in sorted(self.phase_mean_s.items())]
                or [("(no phases timed)", "")],
            ),
            (
                "Throughput per phase (tokens/s, MFU)",
                [(phase, self._perf_text(phase)) for phase in sorted({k.split("/", 1)[1] for k in self.perf_mean})]
                or [("(not measured)", "")],
            ),
            (
                "Peak host memory, GiB (sum of per-process peaks)",
                [
                    ("driver", f"{bytes_to_gib(memory.driver_bytes):.2f}"),
                    (
                        f"workers ({len(memory.worker_bytes)} processes{largest})",
                        f"{bytes_to_gib(memory.workers_bytes):.2f}",
                    ),
                    ("total (upper bound)", f"{bytes_to_gib(memory.total_bytes):.2f}"),
                ],
            ),
            ("Outputs", [(name, value or "-") for name, value in self.paths.to_dict().items()]),
        ]
        width = max(len(label) for _, rows in sections for label, _ in rows) + 2
        rule_len = max(60, width + max(len(value) for _, rows in sections for _, value in rows) + 2)
        lines: list[str] = []
        for title, rows in sections:
            lines.append(f"-- {title} ".ljust(rule_len, "-"))
            lines.extend(f"  {label.ljust(width)}{value}".rstrip() for label, value in rows)
        lines.append("-" * rule_len)
        return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _span_text(span: MetricSpan, percent: bool) -> str:
    """'20.0% -> 50.0%  (+30.0 points, step 0 -> 100)' or the reward equivalent."""
    if span.start is None or span.end is None or span.change is None:
        return "n/a (not logged)"
    if percent:
        body = f"{span.start:.1%} -> {span.end:.1%}  ({span.change * 100.0:+.1f} points"
    else:
        body = f"{span.start:.4f} -> {span.end:.4f}  ({span.change:+.4f}"
    return f"{body}, step {span.start_step} -> {span.end_step})"


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
