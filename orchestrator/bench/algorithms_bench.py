"""Algorithms side by side: each one trains from the same cached warm start for the same number of
steps; the table reads val accuracy before/after and seconds per step from each run's summary.json.

Not a test: `baton bench algorithms --steps 40 [--algorithms grpo,ppo] [--write] [key=value ...]`.
Overrides after the flags go to every run (e.g. `preset=smoke`). A run that fails is reported in
the table and does not stop the others.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import traceback
from pathlib import Path
from typing import Any

from orchestrator.config import compose_config, list_groups, validate_config

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
COLUMNS = ("algorithm", "steps", "val acc before", "val acc after", "change (points)", "s/step", "reward start -> end")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def row_from_summary(algorithm: str, summary: dict[str, Any]) -> list[str]:
    """One table row from a summary.json (see orchestrator/tracking/summary.py for the keys)."""
    change = summary.get("accuracy_change_points")
    return [algorithm, str(summary["steps"]), _pct(summary.get("accuracy_start")), _pct(summary.get("accuracy_end")),
            "n/a" if change is None else f"{change:+.1f}", _num(summary.get("seconds_per_step"), ".2f"),
            f"{_num(summary.get('reward_start'), '.3f')} -> {_num(summary.get('reward_end'), '.3f')}"]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def run_config(algorithm: str, steps: int, root: Path, overrides: list[str]):
    """The validated config of one run (files on disk are checked when it starts)."""
    return validate_config(compose_config([
        f"algorithm={algorithm}", f"trainer.total_steps={steps}", f"trainer.output_dir={root / algorithm}",
        f"trainer.experiment_name=bench-{algorithm}", "trainer.progress_bar=false", *overrides]), check_files=False)


def run_one(algorithm: str, steps: int, root: Path, overrides: list[str]) -> dict[str, Any]:
    """Train one algorithm (in this process; Ray actors are created and torn down per run)."""
    from orchestrator.config.validate import check_model_paths
    from orchestrator.entry import train

    cfg = run_config(algorithm, steps, root, overrides)
    check_model_paths(cfg)
    out = Path(cfg.trainer.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # a fresh metrics log: the summary reads its first and last values
    train(cfg)
    return json.loads((out / "summary.json").read_text())


def run_algorithms_bench(algorithms: list[str], steps: int, root: Path, overrides: list[str],
                         write: bool) -> str:
    for algorithm in algorithms:  # a bad override fails here, once, before anything runs
        run_config(algorithm, steps, root, overrides)
    from orchestrator.entry import ensure_warm_start

    ensure_warm_start(validate_config(compose_config(overrides), check_files=False))
    rows = []
    for algorithm in algorithms:
        try:
            rows.append(row_from_summary(algorithm, run_one(algorithm, steps, root, overrides)))
        except Exception as err:  # noqa: BLE001 - one failed run must not hide the others' figures
            traceback.print_exc()
            reason = f"{type(err).__name__}: {err}"[:80].replace("|", "/")
            rows.append([algorithm, str(steps), "failed", reason, "", "", ""])
    table = markdown_table(rows)
    print(table)
    if write:
        append_section(table, algorithms, steps, overrides)
    return table


def append_section(table: str, algorithms: list[str], steps: int, overrides: list[str]) -> None:
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    command = " ".join(["baton bench algorithms", f"--steps {steps}", f"--algorithms {','.join(algorithms)}",
                        *overrides])
    text = (f"\n## Algorithms from the warm start (`baton bench algorithms`)\n\nDate {date}, {machine}. "
            f"Command: `{command}`. Val accuracy (at rollout.val_temperature) before the first and after the last "
            "step; "
            f"s/step is the loop's wall time (validation included) / steps.\n\n{table}\n")
    with BENCHMARKS_MD.open("a") as f:
        f.write(text)
    print(f"bench: appended to {BENCHMARKS_MD}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="RL steps per algorithm")
    parser.add_argument("--algorithms", default="all", help="comma-separated names, or 'all' (configs/algorithm/)")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench/algorithms"), help="runs go to ROOT/<name>")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. preset=smoke")
    args = parser.parse_args(argv)
    known = list_groups()["algorithm"]
    algorithms = known if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    unknown = [a for a in algorithms if a not in known]
    if unknown:
        raise SystemExit(f"bench algorithms: unknown {unknown}; known: {', '.join(known)}")
    if args.steps < 1:
        raise SystemExit("bench algorithms: --steps must be >= 1")
    run_algorithms_bench(algorithms, args.steps, args.root, list(args.overrides), args.write)


if __name__ == "__main__":
    main()
