"""Weight-sync seconds and GB/s against model size, colocated and split side by side, from one run.

Not a test: run `baton bench sync` and read the table. For each size a random-init Qwen2 is
built with `build_tiny_model` (char tokenizer, so nearly all parameters sit in the layers),
and the same full weights are synced two ways:

- colocated: the hybrid engine's `rollout_mode()` in one process, streaming bucket by bucket
  into a built-in rollout engine (`stream_weights` phase; on CPU offloading moves nothing);
- split: the sender broadcasts the buckets over a gloo weight-sync group to a separate process
  that loads them into its own built-in engine; the time ends when that process has loaded
  every bucket (the protocol's closing barrier).

One trainer rank, no FSDP sharding: gathers are local, so the figures are the copy/transport
cost of the sync itself. Timings are best and median of `repeats` syncs after one warm-up.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from workers.dtypes import to_dtype

# name -> (hidden, layers, heads, intermediate); kv heads = heads, tied embeddings
SIZES: dict[str, tuple[int, int, int, int]] = {
    "3M": (256, 4, 4, 768),
    "25M": (512, 7, 8, 1536),
    "100M": (1024, 8, 16, 2816),
}
JOIN_TIMEOUT_S = 120.0


def _build(root: Path, name: str) -> Path:
    from orchestrator.assets.tiny_model import build_tiny_model

    hidden, layers, heads, inter = SIZES[name]
    return build_tiny_model(root / name, arch="qwen2", hidden_size=hidden, num_layers=layers, num_heads=heads,
                            num_kv_heads=heads, intermediate_size=inter, max_position_embeddings=64, seed=0,
                            tie_word_embeddings=True)


def _engine(path: Path, dtype: str) -> Any:
    from workers.rollout.builtin.engine import BuiltinRolloutEngine

    return BuiltinRolloutEngine.from_pretrained(path, dtype=dtype, device="cpu", max_batch_size=1, max_seq_len=64)


def _timings(seconds: list[float], nbytes: int) -> dict[str, float]:
    best, median = min(seconds), statistics.median(seconds)
    return {"best_s": best, "median_s": median, "gb_per_s": nbytes / best / 1e9, "bytes": nbytes}


def _receiver(path: str, dtype: str, port: int, syncs: int, threads: int | None) -> None:
    """The split side's rollout process: join the group, load every sync into its own engine."""
    from hybrid_engine import connect_sync_store, join_sync_group, receive_weights

    if threads:
        torch.set_num_threads(threads)
    engine = _engine(Path(path), dtype)
    store = connect_sync_store("127.0.0.1", port, JOIN_TIMEOUT_S)
    group = join_sync_group(store, rank=1, world_size=2, device=torch.device("cpu"), timeout_s=JOIN_TIMEOUT_S)
    for _ in range(syncs):
        for bucket in receive_weights(group):
            engine.load_weights(bucket)


def _measure(module: torch.nn.Module, path: Path, dtype: str, bucket_bytes: int, repeats: int,
             threads: int | None) -> dict[str, Any]:
    """Colocated and split syncs alternate, so background load (shared cores) hits both alike."""
    from hybrid_engine import HybridEngine, ModuleState, WeightStream, join_sync_group, open_sync_store, send_weights

    cpu = torch.device("cpu")
    hybrid = HybridEngine(ModuleState(module, None, cpu), _engine(path, dtype), device=cpu, bucket_bytes=bucket_bytes,
                          weight_dtype=to_dtype(dtype), offload_params=True, offload_optimizer=True,
                          is_rollout_consumer=True)
    store, port = open_sync_store("127.0.0.1", JOIN_TIMEOUT_S)
    proc = mp.get_context("spawn").Process(target=_receiver, args=(str(path), dtype, port, repeats + 1, threads))
    proc.start()
    colocated: list[float] = []
    split: list[float] = []
    try:
        group = join_sync_group(store, rank=0, world_size=2, device=torch.device("cpu"), timeout_s=JOIN_TIMEOUT_S)
        for _ in range(repeats + 1):  # the first round is a warm-up
            hybrid.train_mode()
            report = hybrid.rollout_mode()
            colocated.append(report.phases["stream_weights"])
            stream = WeightStream(module, bucket_bytes=bucket_bytes, dtype=to_dtype(dtype), consumer=True)
            stats = send_weights(group, stream)
            split.append(stats.seconds)
        proc.join(JOIN_TIMEOUT_S)
        if proc.exitcode != 0:
            raise RuntimeError(f"sync bench: receiver process exited with {proc.exitcode}")
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
    return {"colocated": _timings(colocated[1:], report.stream_bytes), "split": _timings(split[1:], stats.payload_bytes),
            "buckets": stats.buckets}


def run_sync_bench(sizes: list[str], repeats: int, bucket_bytes: int, dtype: str,
                   threads: int | None) -> list[dict[str, Any]]:
    """Measure both placements for each size; print one table; return the rows."""
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="baton-sync-bench-") as tmp:
        for name in sizes:
            path = _build(Path(tmp), name)
            module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            params = sum(p.numel() for p in module.parameters())
            rows.append({"size": name, "params": params, **_measure(module, path, dtype, bucket_bytes, repeats, threads)})
            del module
    _print_table(rows, repeats, bucket_bytes, dtype)
    return rows


def _print_table(rows: list[dict[str, Any]], repeats: int, bucket_bytes: int, dtype: str) -> None:
    print(f"sync bench: {dtype} weights, {bucket_bytes / 2**20:.0f} MiB buckets, best of {repeats} after a "
          f"warm-up, {torch.get_num_threads()} torch threads, CPU (gloo for split)")
    print(f"{'':<25}{'colocated (in-process)':>26}   {'split (gloo broadcast)':>26}")
    print(f"{'model':<7}{'params':>9}{'MB':>9}{'bkts':>5}  {'best s':>8}{'median s':>10}{'GB/s':>7}"
          f"   {'best s':>8}{'median s':>10}{'GB/s':>7}")
    for r in rows:
        c, s = r["colocated"], r["split"]
        print(f"{r['size']:<7}{r['params'] / 1e6:>8.1f}M{c['bytes'] / 1e6:>9.1f}{r['buckets']:>5}  "
              f"{c['best_s']:>8.4f}{c['median_s']:>10.4f}{c['gb_per_s']:>7.2f}"
              f"   {s['best_s']:>8.4f}{s['median_s']:>10.4f}{s['gb_per_s']:>7.2f}")


def _default_bucket_bytes() -> int:
    from orchestrator.config import compose_config

    return int(compose_config([]).hybrid.bucket_bytes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="baton bench sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-bytes", type=int, default=None, help="default: hybrid.bucket_bytes of the config")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    run_sync_bench(sizes, args.repeats, args.bucket_bytes or _default_bucket_bytes(), args.dtype, args.threads)


if __name__ == "__main__":
    main()
