"""Metric sinks for the driver: a JSONL log, TensorBoard scalars, a console line.

`metrics.jsonl` is the source of truth (the summary and the plots read it); it is
flushed after every step so a crashed run keeps everything logged before the crash.
One line per `log` call: `{"step": <int>, "time": <unix seconds>, "<metric>": <float|null>, ...}`.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

ALLOWED_BACKENDS: tuple[str, ...] = ("jsonl", "tensorboard", "console")
METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
RESERVED_KEYS: tuple[str, ...] = ("step", "time")

MetricValue = Union[float, int, bool, torch.Tensor, np.generic, np.ndarray]


def to_float(key: str, value: MetricValue) -> float:
    """Convert one metric to a Python float; TypeError naming the key if it is not a scalar."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r}: tensor with {value.numel()} elements, expected a scalar")
        return float(value.detach().cpu().item())
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise TypeError(f"metric {key!r}: array with {value.size} elements, expected a scalar")
        return float(value.reshape(()).item())
    if isinstance(value, (numbers.Real, np.number, np.bool_)):
        return float(value)
    raise TypeError(f"metric {key!r}: cannot log a {type(value).__name__}, expected a real number")


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read every complete record of a metrics log, in file order.

    A line that does not parse (the torn last line of a killed run) is skipped
    with a warning instead of failing the summary or the plot.
    """
    records: list[dict[str, Any]] = []
    with Path(path).open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: skipping a line that is not valid JSON", stacklevel=2)
    return records


class Tracker:
    """Fan one step's metrics out to the chosen backends.

    Backends: "jsonl" (`output_dir/metrics.jsonl`, appended so a resumed run
    continues the same file), "tensorboard" (`output_dir/tensorboard`),
    "console" (one line per step, written through tqdm so a live progress bar
    is not broken). Non-finite values are kept as `null` in the JSONL and left
    out of TensorBoard (an inf flattens every chart); the first one warns.
    """

    def __init__(self, output_dir: Path, backends: list[str], experiment_name: str) -> None:
        unknown = [name for name in backends if name not in ALLOWED_BACKENDS]
        if unknown:
            raise ValueError(f"unknown tracking backend(s) {unknown}; allowed: {list(ALLOWED_BACKENDS)}")
        if len(set(backends)) != len(backends):
            raise ValueError(f"tracking backends listed twice: {backends}")
        self.output_dir = Path(output_dir)
        self.backends = list(backends)
        self.experiment_name = experiment_name
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._warned_non_finite = False
        self._closed = False
        self._jsonl: IO[str] | None = None
        self._writer: Any = None
        if "jsonl" in self.backends:
            self._jsonl = self.metrics_path.open("a", encoding="utf-8")
        if "tensorboard" in self.backends:
            self._open_tensorboard(purge_step=None)
            self._writer.add_text("experiment_name", experiment_name, global_step=0)

    def _open_tensorboard(self, purge_step: int | None) -> None:
        # Imported here: it costs about a second and only this backend needs it.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=purge_step)

    def has_record(self, step: int) -> bool:
        """Whether the JSONL log already holds a record for `step` (False without the JSONL backend)."""
        if self._jsonl is None or not self.metrics_path.is_file():
            return False
        self._jsonl.flush()
        return any(int(r["step"]) == step for r in read_metrics_jsonl(self.metrics_path))

    def rewind(self, step: int, restore: Mapping[str, Any] | None = None) -> int:
        """Forget every record after `step` (a resumed or restarted run redoes those steps), so each step is
        logged once; `restore` is the record of `step` itself, written back if the log lost it. Returns how
        many records were dropped."""
        dropped = 0
        if self._jsonl is not None:
            self._jsonl.close()
            records = read_metrics_jsonl(self.metrics_path) if self.metrics_path.is_file() else []
            kept = [r for r in records if int(r["step"]) <= step]
            if restore is not None and not any(int(r["step"]) == step and "timing_s/step" in r for r in kept):
                kept.append({"step": int(step), "time": time.time(), **restore})
            dropped = sum(1 for r in records if int(r["step"]) > step)
            tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.metrics_path)
            self._jsonl = self.metrics_path.open("a", encoding="utf-8")
        if self._writer is not None:
            self._writer.close()
            self._open_tensorboard(purge_step=step + 1)
        return dropped

    @property
    def metrics_path(self) -> Path:
        """Where the JSONL backend writes (whether or not it is enabled)."""
        return self.output_dir / METRICS_FILENAME

    @property
    def tensorboard_dir(self) -> Path:
        """Where the TensorBoard backend writes (whether or not it is enabled)."""
        return self.output_dir / TENSORBOARD_DIRNAME

    def log(self, step: int, metrics: Mapping[str, MetricValue]) -> None:
        """Record one step's metrics in every backend; JSONL is flushed before returning."""
        if self._closed:
            raise RuntimeError("Tracker.log called after close()")
        clashes = [key for key in metrics if key in RESERVED_KEYS]
        if clashes:
            raise ValueError(f"metric names {clashes} are reserved in each record: {list(RESERVED_KEYS)}")
        values = {key: to_float(key, value) for key, value in metrics.items()}
        non_finite = sorted(key for key, value in values.items() if not math.isfinite(value))
        if non_finite and not self._warned_non_finite:
            self._warned_non_finite = True
            logger.warning(
                "step %d: non-finite metric(s) %s logged as null in JSONL and skipped in TensorBoard "
                "(warned once per run)",
                step,
                non_finite,
            )
        if self._jsonl is not None:
            self._write_jsonl(step, values)
        if self._writer is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()
        if "console" in self.backends:
            self._write_console(step, values)

    def _write_jsonl(self, step: int, values: Mapping[str, float]) -> None:
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        record.update({key: (value if math.isfinite(value) else None) for key, value in values.items()})
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()

    def _write_console(self, step: int, values: Mapping[str, float]) -> None:
        fields = " | ".join(f"{key} {value:.4g}" for key, value in sorted(values.items()))
        tqdm.write(f"[{self.experiment_name}] step {step} | {fields}", file=sys.stdout)

    def close(self) -> None:
        """Flush and close every backend; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._jsonl is not None:
            self._jsonl.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
