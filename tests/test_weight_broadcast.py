"""Split-placement weight sync over its own gloo group: 2 FSDP2 trainer ranks + 1 receiver process.

The receiver is in no training group at all (as a rollout worker in another pool), and the
buckets are smaller than one weight matrix, so every path of the protocol runs.
"""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsdp_harness import fsdp2, tiny_qwen2
from hybrid_engine.broadcast import pack_bucket, receive_weights, send_weights, unpack_bucket
from hybrid_engine.sync_group import connect_sync_store, join_sync_group, open_sync_store
from hybrid_engine.weight_stream import WeightStream

CPU = torch.device("cpu")
SMALL_BUCKET = 1024  # bytes: smaller than every weight matrix (embeddings are 50*64*4 = 12800)
TIMEOUT_S = 60.0


def _wait_for_port(path: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"no store port in {path} after {timeout_s}s")


def _trainer(rank: int, tmp: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'fsdp_init'}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        model = fsdp2(tiny_qwen2(tie=True, seed=0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(rank))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()  # the weights now differ from anything the receiver could rebuild itself
        reference = {n: t.clone() for b in WeightStream(model, bucket_bytes=1 << 30, dtype=torch.float32,
                                                         consumer=True) for n, t in b}
        group = None
        if rank == 0:
            torch.save(reference, tmp / "reference.pt")
            store, port = open_sync_store("127.0.0.1", TIMEOUT_S)
            (tmp / "port.tmp").write_text(str(port))
            (tmp / "port.tmp").rename(tmp / "port")
            group = join_sync_group(store, rank=0, world_size=2, device=CPU, timeout_s=TIMEOUT_S)
        for dtype in (torch.float32, torch.bfloat16):
            stream = WeightStream(model, bucket_bytes=SMALL_BUCKET, dtype=dtype, consumer=group is not None)
            stats = send_weights(group, stream)
            if group is not None:
                torch.save(stats, tmp / f"stats-{str(dtype)[6:]}.pt")
            else:
                assert stats.buckets == 0 and stream.stats.tensors == len(reference)  # joined every gather
        dist.barrier()  # both trainer ranks done before either tears its group down
    finally:
        dist.destroy_process_group()


def _receiver(tmp: Path) -> None:
    torch.set_num_threads(1)
    store = connect_sync_store("127.0.0.1", _wait_for_port(tmp / "port", TIMEOUT_S), TIMEOUT_S)
    group = join_sync_group(store, rank=1, world_size=2, device=CPU, timeout_s=TIMEOUT_S)
    for dtype in ("float32", "bfloat16"):
        got: dict[str, torch.Tensor] = {}
        for bucket in receive_weights(group):
            assert not set(got) & {n for n, _ in bucket}
            got.update(bucket)  # views of a fresh buffer per bucket: safe to keep
        torch.save(got, tmp / f"received-{dtype}.pt")


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    if rank < 2:
        _trainer(rank, Path(tmp))
    else:
        _receiver(Path(tmp))


@pytest.mark.timeout(180)
def test_split_broadcast_gives_receiver_exactly_the_trainer_weights(tmp_path) -> None:
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=3, join=True)
    reference = torch.load(tmp_path / "reference.pt")
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype)[6:]
        got = torch.load(tmp_path / f"received-{name}.pt")
        stats = torch.load(tmp_path / f"stats-{name}.pt", weights_only=False)
        assert list(got) == list(reference)  # every weight, once, in stream order
        for key, value in reference.items():
            assert got[key].dtype == dtype and torch.equal(got[key], value.to(dtype)), key
        assert stats.tensors == len(reference) and 1 < stats.buckets < stats.tensors
        assert stats.payload_bytes >= sum(v.numel() * dtype.itemsize for v in reference.values())
        assert stats.seconds > 0


# -- nothing hangs: a missing or silent peer is an error within the group's timeout -------------------


def _silent_sender(rank: int, tmp: str, timeout_s: float) -> None:
    path = Path(tmp)
    if rank == 0:
        store, port = open_sync_store("127.0.0.1", timeout_s)
        (path / "port").write_text(str(port))
        join_sync_group(store, rank=0, world_size=2, device=CPU, timeout_s=timeout_s)
        time.sleep(timeout_s + 3)  # joined, then never sends
        return
    store = connect_sync_store("127.0.0.1", _wait_for_port(path / "port", 30), timeout_s)
    group = join_sync_group(store, rank=1, world_size=2, device=CPU, timeout_s=timeout_s)
    start = time.monotonic()
    try:
        next(receive_weights(group))
    except RuntimeError:
        elapsed = time.monotonic() - start
        assert elapsed < timeout_s + 2, elapsed
        (path / "raised").write_text(f"{elapsed:.1f}")


@pytest.mark.timeout(60)
def test_receiver_with_a_silent_sender_fails_within_the_timeout(tmp_path) -> None:
    mp.spawn(_silent_sender, args=(str(tmp_path), 2.0), nprocs=2, join=True)
    assert (tmp_path / "raised").is_file()


@pytest.mark.timeout(30)
def test_joining_without_peers_fails_within_the_timeout() -> None:
    store, _ = open_sync_store("127.0.0.1", 2.0)
    start = time.monotonic()
    with pytest.raises(Exception):
        join_sync_group(store, rank=0, world_size=2, device=CPU, timeout_s=2.0)
    assert time.monotonic() - start < 10


# -- single-process checks -----------------------------------------------------------------------


def test_pack_unpack_round_trip_mixed_dtypes_and_shapes() -> None:
    bucket = [("a", torch.randn(3, 5)), ("b", torch.arange(7, dtype=torch.int64)),
              ("c", torch.randn(2, 3).to(torch.bfloat16)), ("d", torch.tensor(2.5)), ("e", torch.zeros(0, 4))]
    header, payload = pack_bucket(bucket, CPU)
    assert payload.dtype == torch.uint8 and payload.numel() % 64 == 0
    out = unpack_bucket(header, payload.clone())
    assert [n for n, _ in out] == ["a", "b", "c", "d", "e"]
    for (_, want), (_, got) in zip(bucket, out):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
