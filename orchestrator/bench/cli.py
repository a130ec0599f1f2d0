"""`baton bench <name> [flags]`: each benchmark owns its flags and prints side-by-side figures from one run."""
from __future__ import annotations

BENCHES = {"rollout": "orchestrator.bench.rollout_bench", "sync": "orchestrator.bench.sync_bench",
           "algorithms": "orchestrator.bench.algorithms_bench", "sampling": "orchestrator.bench.sampling_bench",
           "backends": "orchestrator.bench.compare_bench", "corrections": "orchestrator.bench.compare_bench",
           "padding": "orchestrator.bench.compare_bench", "precision": "orchestrator.bench.compare_bench",
           "throughput": "orchestrator.bench.compare_bench", "train": "orchestrator.bench.train_bench",
           "e2e": "orchestrator.bench.e2e_bench", "async": "orchestrator.bench.compare_bench",
           "stream": "orchestrator.bench.stream_bench"}
NAMED_SETS = ("backends", "padding", "throughput", "precision", "corrections", "async")  # compare_bench runs the set named like the command


def bench_main(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHES:
        raise SystemExit(f"usage: baton bench {{{'|'.join(BENCHES)}}} [--help]")
    import importlib

    module = importlib.import_module(BENCHES[argv[0]])
    if argv[0] in NAMED_SETS:
        module.main(argv[1:], name=argv[0])
    else:
        module.main(argv[1:])
