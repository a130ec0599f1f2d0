"""Driver-side tracking: phase timers, metric sinks, progress bar, run summary, plots.

Everything here runs in the single controller (the Ray driver); workers report
plain numbers in their returned Batch meta and the driver records them.
"""

from orchestrator.tracking.memory import PeakMemory, current_rss_bytes, process_peak_rss_bytes
from orchestrator.tracking.plots import plot_curves
from orchestrator.tracking.progress import TrainingProgress
from orchestrator.tracking.summary import OutputPaths, RunHealth, RunSummary
from orchestrator.tracking.timer import phase_timer, throughput
from orchestrator.tracking.tracker import ALLOWED_BACKENDS, Tracker, read_metrics_jsonl

__all__ = [
    "ALLOWED_BACKENDS",
    "OutputPaths",
    "PeakMemory",
    "RunHealth",
    "RunSummary",
    "Tracker",
    "TrainingProgress",
    "current_rss_bytes",
    "phase_timer",
    "plot_curves",
    "process_peak_rss_bytes",
    "read_metrics_jsonl",
    "throughput",
]
