"""`baton bench <name> [--flag value ...]`: benchmarks print side-by-side figures from one run."""
from __future__ import annotations

import argparse


def bench_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="baton bench")
    sub = parser.add_subparsers(dest="name", required=True)
    rollout = sub.add_parser("rollout", help="built-in engine vs HF generate, tokens/s")
    rollout.add_argument("--batch-size", type=int, default=64)
    rollout.add_argument("--new-tokens", type=int, default=64)
    rollout.add_argument("--prompt-len", type=int, default=16)
    rollout.add_argument("--repeats", type=int, default=3)
    rollout.add_argument("--dtype", default="float32")
    rollout.add_argument("--threads", type=int, default=None)
    rollout.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.name == "rollout":
        from orchestrator.bench.rollout_bench import run_rollout_bench

        run_rollout_bench(batch_size=args.batch_size, new_tokens=args.new_tokens, prompt_len=args.prompt_len,
                          repeats=args.repeats, dtype=args.dtype, threads=args.threads, device=args.device)
