"""Algorithms side by side from the same warm start (orchestrator/bench/variants.py runs them).

Not a test: `baton bench algorithms --steps 40 [--algorithms grpo,ppo] [--write] [key=value ...]`.
Overrides after the flags go to every run (e.g. `preset=smoke`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.bench.variants import append_section, run_variants
from orchestrator.config import list_groups


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
    variants = {a: [f"algorithm={a}"] for a in algorithms}
    table = run_variants("algorithm", variants, args.steps, args.root, list(args.overrides))
    if args.write:
        command = " ".join(["baton bench algorithms", f"--steps {args.steps}", f"--algorithms {','.join(algorithms)}",
                            *args.overrides])
        append_section("Algorithms from the warm start (`baton bench algorithms`)", command,
                       "Val accuracy (at rollout.val_temperature) before the first and after the last step; s/step is "
                       "the loop's wall time (validation included) / steps.", table)


if __name__ == "__main__":
    main()
