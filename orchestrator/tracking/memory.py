"""Host-memory figures for the run summary: this process's RSS and its peak.

Each worker process reports its own `process_peak_rss_bytes()` (workers may not
import orchestrator, so they carry the same few lines; the figure's meaning is
what matters) and the driver adds them up in `PeakMemory`.

Summing per-process peaks gives an upper bound on the peak of the summed RSS:
the processes need not peak at the same moment, so the true simultaneous peak
is at most this sum, never more. Shared pages (e.g. Ray's object store mapped
into several processes) are counted once per process, which also only raises
the figure. Treat it as "the run needed no more than this".
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes.

    `ru_maxrss` is KiB on Linux and bytes on macOS; both become bytes here.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int:
    """Resident set size of this process right now, in bytes.

    Linux: second field of /proc/self/statm (pages). Elsewhere psutil, which
    Ray already installs; RuntimeError if neither is available.
    """
    statm = Path("/proc/self/statm")
    if statm.exists():
        resident_pages = int(statm.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    try:
        import psutil
    except ImportError as err:
        raise RuntimeError("current_rss_bytes: no /proc/self/statm and psutil is not installed") from err
    return int(psutil.Process().memory_info().rss)


def bytes_to_gib(num_bytes: int | float) -> float:
    """Bytes as GiB (2**30), the unit the summary reports."""
    return float(num_bytes) / GIB


@dataclass(frozen=True)
class PeakMemory:
    """Peak host RSS of the driver and of each worker process, in bytes.

    `worker_bytes` maps a process label (e.g. "actor_rollout/rank0") to that
    process's own peak. `total_bytes` is the conservative sum (see module doc).
    """

    driver_bytes: int
    worker_bytes: Mapping[str, int]

    def __post_init__(self) -> None:
        negative = {name: value for name, value in self.worker_bytes.items() if value < 0}
        if self.driver_bytes < 0 or negative:
            raise ValueError(
                f"peak memory must be >= 0 bytes: driver={self.driver_bytes}, negative workers={negative}"
            )

    @property
    def workers_bytes(self) -> int:
        """Sum of the worker processes' peaks."""
        return int(sum(self.worker_bytes.values()))

    @property
    def total_bytes(self) -> int:
        """Driver peak + every worker peak: an upper bound on the run's simultaneous peak."""
        return self.driver_bytes + self.workers_bytes
