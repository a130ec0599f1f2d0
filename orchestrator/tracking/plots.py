"""Training curves as a PNG, from `metrics.jsonl`, for a person skimming a run.

Uses matplotlib's object API with the Agg canvas directly: no pyplot state, no
display needed, and no change to the process-wide backend.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from orchestrator.tracking.tracker import read_metrics_jsonl

# Figure geometry: one row of subplots per key.
SUBPLOT_WIDTH_IN = 7.0
SUBPLOT_HEIGHT_IN = 2.6
DPI = 100
# Short curves get point markers so isolated validation points stay visible.
MARKER_MAX_POINTS = 30


def plot_curves(metrics_jsonl: Path, out_png: Path, keys: list[str]) -> Path:
    """Plot each key against step, one subplot per key, into `out_png`; return it.

    A key never logged (or only as null) still gets its subplot, titled
    "<key> (not logged)", so the figure's layout is the same from run to run.
    """
    if not keys:
        raise ValueError("plot_curves needs at least one metric key")
    records = read_metrics_jsonl(metrics_jsonl)
    figure = Figure(figsize=(SUBPLOT_WIDTH_IN, SUBPLOT_HEIGHT_IN * len(keys)), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows=len(keys), ncols=1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = [(int(r["step"]), float(r[key])) for r in records if r.get(key) is not None]
        if points:
            steps, values = zip(*points)
            marker = "o" if len(points) <= MARKER_MAX_POINTS else None
            ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2)
            ax.set_title(key, fontsize=10)
        else:
            ax.set_title(f"{key} (not logged)", fontsize=10, color="gray")
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
            ax.set_yticks([])
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("step")
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, format="png")
    return out_png
