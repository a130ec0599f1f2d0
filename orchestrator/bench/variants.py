"""Named variants of one job side by side: each trains from the same cached warm start for the same number of
steps; the table reads val accuracy before/after and seconds per step from each run's summary.json.

Runs go one after the other in this process (Ray actors are created and torn down per run). A run that
fails is reported in the table and does not stop the others. Used by `baton bench algorithms` and
`baton bench backends`.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import traceback
from pathlib import Path
from typing import Any

from orchestrator.config import compose_config, validate_config

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
COLUMNS = ("steps", "val acc before", "val acc after", "change (points)", "s/step", "reward start -> end")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def row_from_summary(name: str, summary: dict[str, Any]) -> list[str]:
    """One table row from a summary.json (see orchestrator/tracking/summary.py for the keys)."""
    change = summary.get("accuracy_change_points")
    return [name, str(summary["steps"]), _pct(summary.get("accuracy_start")), _pct(summary.get("accuracy_end")),
            "n/a" if change is None else f"{change:+.1f}", _num(summary.get("seconds_per_step"), ".2f"),
            f"{_num(summary.get('reward_start'), '.3f')} -> {_num(summary.get('reward_end'), '.3f')}"]


def markdown_table(first_column: str, rows: list[list[str]]) -> str:
    columns = (first_column, *COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def run_config(name: str, variant: list[str], steps: int, root: Path, overrides: list[str]):
    """The validated config of one run (files on disk are checked when it starts)."""
    return validate_config(compose_config([
        *variant, f"trainer.total_steps={steps}", f"trainer.output_dir={root / _slug(name)}",
        f"trainer.experiment_name=bench-{_slug(name)}", "trainer.progress_bar=false", *overrides]), check_files=False)


def run_one(name: str, variant: list[str], steps: int, root: Path, overrides: list[str]) -> dict[str, Any]:
    from orchestrator.entry import train

    cfg = run_config(name, variant, steps, root, overrides)
    out = Path(cfg.trainer.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run directory: the summary reads its first and last values
    train(cfg)
    return json.loads((out / "summary.json").read_text())


def run_variants(first_column: str, variants: dict[str, list[str]], steps: int, root: Path,
                 overrides: list[str]) -> str:
    for name, variant in variants.items():  # a bad override fails here, once, before anything runs
        run_config(name, variant, steps, root, overrides)
    from orchestrator.entry import ensure_warm_start

    ensure_warm_start(validate_config(compose_config(overrides), check_files=False))
    rows = []
    for name, variant in variants.items():
        try:
            rows.append(row_from_summary(name, run_one(name, variant, steps, root, overrides)))
        except Exception as err:  # noqa: BLE001 - one failed run must not hide the others' figures
            traceback.print_exc()
            reason = f"{type(err).__name__}: {err}"[:80].replace("|", "/")
            rows.append([name, str(steps), "failed", reason, "", "", ""])
    table = markdown_table(first_column, rows)
    print(table)
    return table


def append_section(title: str, command: str, note: str, table: str) -> None:
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    text = f"\n## {title}\n\nDate {date}, {machine}. Command: `{command}`. {note}\n\n{table}\n"
    with BENCHMARKS_MD.open("a") as f:
        f.write(text)
    print(f"bench: appended to {BENCHMARKS_MD}")
