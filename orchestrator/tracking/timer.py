"""Wall-clock phase timers that write straight into a step's metrics dict.

The trainer's `fit` loop wraps each dataflow stage in `phase_timer` so the
per-step metrics carry `timing_s/<phase>` without any bookkeeping in the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

TIMING_PREFIX = "timing_s/"
THROUGHPUT_PREFIX = "perf/tokens_per_s/"


def timing_key(phase: str) -> str:
    """Metric name under which `phase_timer(phase, ...)` records seconds."""
    return f"{TIMING_PREFIX}{phase}"


@contextmanager
def phase_timer(phase: str, metrics: MutableMapping[str, float]) -> Iterator[None]:
    """Time the body and add its seconds to `metrics["timing_s/<phase>"]`.

    Timers nest freely (an outer "step" around inner "generate", "update", ...);
    each records its own key. Re-entering the same phase within one step adds
    to the existing value, so a stage called per micro-batch reports its total.
    The time is recorded even if the body raises, so a failing stage still
    shows how long it ran before failing.
    """
    if not phase:
        raise ValueError("phase_timer needs a non-empty phase name")
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        key = timing_key(phase)
        metrics[key] = float(metrics.get(key, 0.0)) + elapsed


def throughput(metrics: MutableMapping[str, float], phase: str, tokens: int | float) -> float:
    """Write `perf/tokens_per_s/<phase>` = tokens / timed seconds of `phase`; return it.

    The phase must already have been timed into `metrics` (KeyError naming it
    otherwise, since a silent zero would hide a mis-spelt phase). A zero
    duration gives NaN rather than raising: tracking must never stop training,
    and the tracker logs NaN as null.
    """
    key = timing_key(phase)
    if key not in metrics:
        timed = sorted(k for k in metrics if k.startswith(TIMING_PREFIX))
        raise KeyError(f"throughput: phase {phase!r} was not timed (no {key!r}); timed phases: {timed}")
    seconds = float(metrics[key])
    rate = float(tokens) / seconds if seconds > 0.0 else math.nan
    metrics[f"{THROUGHPUT_PREFIX}{phase}"] = rate
    return rate
