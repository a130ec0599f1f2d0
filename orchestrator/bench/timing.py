"""Side-by-side timing for benchmarks: runners interleaved round by round, so background load hits them alike."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def time_interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call for each runner: one untimed warm-up each, then `repeats` rounds, one call of each per round.

    Interleaving makes background load (CI neighbours, shared cores) hit every engine alike.
    """
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_seconds(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner (see time_interleaved)."""
    return {name: statistics.median(times) for name, times in time_interleaved(runs, repeats).items()}
