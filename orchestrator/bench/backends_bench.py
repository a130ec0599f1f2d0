"""The default job on each training backend, side by side: FSDP2 against Megatron-core with tensor parallel 2
and with pipeline parallel 2, same warm start, data, seed and steps (orchestrator/bench/variants.py).

Not a test: `baton bench backends --steps 40 [--write] [key=value ...]`. Megatron must learn as FSDP2 does;
the s/step column shows what each layout costs on this machine (2 CPU ranks: TP and PP add collectives and a
pipeline bubble that data parallelism does not have).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.bench.variants import append_section, run_variants

BACKENDS: dict[str, list[str]] = {
    "fsdp2 (dp2)": ["backend=fsdp2"],
    "megatron tp2": ["backend=megatron", "actor.megatron.tensor_model_parallel_size=2"],
    "megatron pp2": ["backend=megatron", "actor.megatron.pipeline_model_parallel_size=2"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="RL steps per backend")
    parser.add_argument("--root", type=Path, default=Path("outputs/bench/backends"), help="runs go to ROOT/<name>")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("bench backends: --steps must be >= 1")
    table = run_variants("backend", BACKENDS, args.steps, args.root, list(args.overrides))
    if args.write:
        command = " ".join(["baton bench backends", f"--steps {args.steps}", *args.overrides])
        append_section("Training backends on the default job (`baton bench backends`)", command,
                       "GRPO from the shipped warm start, one run per backend in turn. Val accuracy: greedy, 256 test "
                       "prompts, before the first and after the last step; s/step: the loop's wall time (validation "
                       "included) / steps.", table)


if __name__ == "__main__":
    main()
