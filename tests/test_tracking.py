"""Driver-side tracking: metric log formats, summary figures, plots, timers."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.tracking import (
    OutputPaths,
    PeakMemory,
    RunSummary,
    Tracker,
    TrainingProgress,
    current_rss_bytes,
    phase_timer,
    plot_curves,
    process_peak_rss_bytes,
    read_metrics_jsonl,
    throughput,
)

GIB = 1024**3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _synthetic_log(path: Path) -> None:
    """A 3-step run: accuracy 0.2 -> 0.5 (validated at steps 0 and 3), reward 0.1 -> 0.4."""
    tracker = Tracker(path.parent, ["jsonl"], "synthetic")
    tracker.log(0, {"val/accuracy": 0.2})
    tracker.log(1, {"reward/mean": 0.1, "timing_s/generate": 2.0, "timing_s/update": 1.0,
                    "perf/tokens_per_s/update": 900.0, "perf/mfu/update": 0.1})
    tracker.log(2, {"reward/mean": 0.3, "timing_s/generate": 4.0, "timing_s/update": 1.0,
                    "perf/tokens_per_s/update": 1100.0, "perf/mfu/update": float("nan")})
    tracker.log(3, {"reward/mean": 0.4, "timing_s/generate": 3.0, "timing_s/update": 1.0, "val/accuracy": 0.5})
    tracker.close()


# --- timer -------------------------------------------------------------------------


def test_phase_timer_records_positive_nested_durations() -> None:
    metrics: dict[str, float] = {}
    with phase_timer("step", metrics):
        with phase_timer("generate", metrics):
            time.sleep(0.01)
        with phase_timer("update", metrics):
            pass
    assert metrics["timing_s/generate"] >= 0.01
    assert metrics["timing_s/update"] > 0.0
    assert metrics["timing_s/step"] >= metrics["timing_s/generate"] + metrics["timing_s/update"]


def test_phase_timer_accumulates_and_records_on_error() -> None:
    metrics: dict[str, float] = {}
    with phase_timer("micro", metrics):
        time.sleep(0.005)
    first = metrics["timing_s/micro"]
    with pytest.raises(RuntimeError):
        with phase_timer("micro", metrics):
            raise RuntimeError("boom")
    assert metrics["timing_s/micro"] > first


def test_throughput_writes_tokens_per_second() -> None:
    metrics = {"timing_s/generate": 2.0}
    assert throughput(metrics, "generate", 1000) == 500.0
    assert metrics["perf/tokens_per_s/generate"] == 500.0
    with pytest.raises(KeyError, match="update"):
        throughput(metrics, "update", 10)


# --- tracker -----------------------------------------------------------------------


def test_jsonl_lines_hold_steps_and_converted_values(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, ["jsonl"], "exp")
    tracker.log(1, {"a": 1, "b": torch.tensor(0.5), "c": np.float32(0.25), "d": np.int64(7), "e": True})
    # Flushed per step: readable before close(), as after a crash.
    assert read_metrics_jsonl(tmp_path / "metrics.jsonl")[0]["b"] == 0.5
    tracker.log(2, {"a": 2.5})
    tracker.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["a"] == 1.0 and records[0]["c"] == 0.25 and records[0]["d"] == 7.0 and records[0]["e"] == 1.0
    assert all(isinstance(records[0][k], float) for k in "abcde")
    assert records[1]["a"] == 2.5


def test_non_finite_values_become_null_and_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), Tracker(tmp_path, ["jsonl"], "exp") as tracker:
        tracker.log(1, {"loss": math.nan, "ok": 1.0})
        tracker.log(2, {"loss": math.inf})
    records = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert records[0]["loss"] is None and records[0]["ok"] == 1.0
    assert records[1]["loss"] is None
    assert sum("non-finite" in r.getMessage() for r in caplog.records) == 1


def test_bad_metric_values_are_rejected_with_their_key(tmp_path: Path) -> None:
    with Tracker(tmp_path, ["jsonl"], "exp") as tracker:
        with pytest.raises(TypeError, match="vec"):
            tracker.log(1, {"vec": torch.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            tracker.log(1, {"step": 1.0})


def test_tensorboard_event_file_holds_the_scalar(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Tracker(tmp_path, ["tensorboard"], "exp") as tracker:
        tracker.log(1, {"reward/mean": 0.25})
        tracker.log(2, {"reward/mean": 0.75, "bad": math.nan})
    tb_dir = tmp_path / "tensorboard"
    assert list(tb_dir.glob("events.out.tfevents.*"))
    assert not (tmp_path / "metrics.jsonl").exists()
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    assert "reward/mean" in events.Tags()["scalars"]
    assert "bad" not in events.Tags()["scalars"]
    scalars = events.Scalars("reward/mean")
    assert [(s.step, s.value) for s in scalars] == [(1, 0.25), (2, 0.75)]


def test_console_backend_prints_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Tracker(tmp_path, ["console"], "exp") as tracker:
        tracker.log(4, {"reward/mean": 0.5})
    out = capsys.readouterr().out
    assert "[exp] step 4" in out and "reward/mean 0.5" in out


def test_unknown_backend_names_it_and_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        Tracker(tmp_path, ["jsonl", "wandb"], "exp")
    message = str(err.value)
    assert "wandb" in message
    assert all(name in message for name in ("jsonl", "tensorboard", "console"))


def test_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert read_metrics_jsonl(path) == [{"step": 1, "a": 1.0}]


# --- summary -----------------------------------------------------------------------


def _summary(tmp_path: Path) -> RunSummary:
    metrics = tmp_path / "metrics.jsonl"
    _synthetic_log(metrics)
    return RunSummary.from_metrics_jsonl(
        metrics,
        experiment_name="synthetic",
        steps=3,
        wall_time_s=12.0,
        accuracy_key="val/accuracy",
        reward_key="reward/mean",
        peak_memory=PeakMemory(driver_bytes=1 * GIB, worker_bytes={"actor/rank0": 2 * GIB, "actor/rank1": 3 * GIB}),
        paths=OutputPaths(
            checkpoints=tmp_path / "ckpt", metrics_jsonl=metrics, tensorboard=None, plot=tmp_path / "curves.png"
        ),
    )


def test_summary_json_keys_and_values(tmp_path: Path) -> None:
    path = _summary(tmp_path).write_json(tmp_path / "summary.json")
    data = json.loads(path.read_text())
    assert set(data) == {
        "schema_version", "experiment_name", "steps", "wall_time_s", "seconds_per_step",
        "accuracy_key", "accuracy_start", "accuracy_end", "accuracy_start_step", "accuracy_end_step",
        "accuracy_change_points", "reward_key", "reward_start", "reward_end", "reward_start_step",
        "reward_end_step", "reward_change", "phase_mean_s", "perf_mean", "peak_memory_driver_gib",
        "peak_memory_workers_gib", "peak_memory_total_gib", "peak_memory_by_worker_gib", "paths",
        "status", "status_message", "restarts", "lost_steps", "skipped_steps",
    }  # fmt: skip
    assert data["schema_version"] == 3
    assert (data["status"], data["restarts"], data["lost_steps"], data["skipped_steps"]) == ("completed", 0, 0, 0)
    assert (data["accuracy_start"], data["accuracy_end"]) == (0.2, 0.5)
    assert (data["accuracy_start_step"], data["accuracy_end_step"]) == (0, 3)
    assert data["accuracy_change_points"] == pytest.approx(30.0)
    assert (data["reward_start"], data["reward_end"]) == (0.1, 0.4)
    assert data["reward_change"] == pytest.approx(0.3)
    assert data["steps"] == 3 and data["seconds_per_step"] == 4.0
    assert data["phase_mean_s"] == {"generate": 3.0, "update": 1.0}
    assert data["perf_mean"] == {"tokens_per_s/update": 1000.0, "mfu/update": 0.1}  # a NaN step is left out
    assert data["peak_memory_driver_gib"] == 1.0
    assert data["peak_memory_workers_gib"] == 5.0
    assert data["peak_memory_total_gib"] == 6.0
    assert data["peak_memory_by_worker_gib"] == {"actor/rank0": 2.0, "actor/rank1": 3.0}
    assert data["paths"]["tensorboard"] is None
    assert data["paths"]["metrics_jsonl"] == str(tmp_path / "metrics.jsonl")


def test_summary_with_metrics_never_logged(tmp_path: Path) -> None:
    summary = RunSummary.from_records(
        [],
        experiment_name="empty",
        steps=0,
        wall_time_s=0.0,
        accuracy_key="val/accuracy",
        reward_key="reward/mean",
        peak_memory=PeakMemory(driver_bytes=0, worker_bytes={}),
        paths=OutputPaths(checkpoints=None, metrics_jsonl=None, tensorboard=None, plot=None),
    )
    data = summary.to_dict()
    assert data["accuracy_change_points"] is None and data["seconds_per_step"] is None
    assert "n/a" in summary.render_table()


def test_render_table_shows_the_figures(tmp_path: Path) -> None:
    table = _summary(tmp_path).render_table()
    for text in ("synthetic", "20.0% -> 50.0%", "+30.0 points", "0.1000 -> 0.4000", "+0.3000",
                 "generate", "3.000", "4.00", "6.00", "upper bound", "1,000 tok/s, MFU 10.0%",
                 str(tmp_path / "ckpt")):  # fmt: skip
        assert text in table, text
    assert table.isascii()
    rows = [line for line in table.splitlines() if line.startswith("  ")]
    column = next(row for row in rows if row.lstrip().startswith("steps")).index("3")
    assert all(row[column - 1] == " " and row[column] != " " for row in rows)  # values aligned


# --- plots, progress, memory -------------------------------------------------------


def test_plot_writes_png_and_tolerates_missing_key(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _synthetic_log(metrics)
    out = plot_curves(metrics, tmp_path / "plots" / "curves.png", ["reward/mean", "val/accuracy", "not/there"])
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_progress_bar_disabled_outside_a_tty() -> None:
    with TrainingProgress(
        total_steps=3,
        initial_step=0,
        description="exp",
        reward_key="reward/mean",
        accuracy_key="val/accuracy",
        disable=False,
        mininterval_s=0.0,
    ) as bar:
        assert not bar.enabled  # pytest captures stdout: not a TTY
        bar.update(1, {"reward/mean": 0.1, "val/accuracy": 0.2})


def test_memory_helpers_report_plausible_sizes() -> None:
    peak, now = process_peak_rss_bytes(), current_rss_bytes()
    assert 10 * 1024**2 < now <= peak * 1.05  # a Python process with torch is tens of MiB at least
    with pytest.raises(ValueError):
        PeakMemory(driver_bytes=-1, worker_bytes={})


def test_rewind_forgets_steps_after_the_checkpoint_and_restores_its_record(tmp_path: Path) -> None:
    """A resumed run redoes steps k+1..: their old records go, so each step is logged once."""
    tracker = Tracker(tmp_path, ["jsonl", "tensorboard"], "rewind")
    tracker.log(0, {"val/accuracy": 0.2})
    for step in (1, 2, 4, 5):  # the killed attempt never logged step 3 (it died between saving and logging)
        tracker.log(step, {"timing_s/step": 1.0, "reward/mean": float(step)})
    dropped = tracker.rewind(3, restore={"timing_s/step": 1.0, "reward/mean": 3.0, "checkpoint/step": 3.0})
    assert dropped == 2 and tracker.has_record(3) and not tracker.has_record(4)
    tracker.log(4, {"timing_s/step": 1.0, "reward/mean": 40.0})
    tracker.close()
    records = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[3]["checkpoint/step"] == 3.0 and records[4]["reward/mean"] == 40.0


def test_rewind_keeps_a_logged_checkpoint_record_as_it_was(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, ["jsonl"], "rewind")
    tracker.log(3, {"timing_s/step": 2.5, "timing_s/save": 0.5})
    tracker.rewind(3, restore={"timing_s/step": 9.9})
    tracker.close()
    assert [r["timing_s/step"] for r in read_metrics_jsonl(tmp_path / "metrics.jsonl")] == [2.5]
