"""`baton bench <name> [flags]`: each benchmark owns its flags and prints side-by-side figures from one run."""
from __future__ import annotations

BENCHES = {"rollout": "orchestrator.bench.rollout_bench", "sync": "orchestrator.bench.sync_bench",
           "algorithms": "orchestrator.bench.algorithms_bench", "backends": "orchestrator.bench.backends_bench",
           "sampling": "orchestrator.bench.sampling_bench"}


def bench_main(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHES:
        raise SystemExit(f"usage: baton bench {{{'|'.join(BENCHES)}}} [--help]")
    import importlib

    importlib.import_module(BENCHES[argv[0]]).main(argv[1:])
