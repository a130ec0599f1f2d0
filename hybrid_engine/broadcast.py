"""Weight sync across pools: the sender broadcasts a WeightStream's buckets, each receiver loads them.

With split placement the rollout engines live in other processes (other devices), so the
in-process `rollout.load_weights(bucket)` of the hybrid engine becomes one broadcast per
bucket over a `SyncGroup`. The bucketing is WeightStream's: the sender never holds more
than one bucket of full tensors, and neither does a receiver.

Protocol, for each bucket (all on the group, rank 0 sends):
  1. sizes   int64[2] = (header bytes, payload bytes)
  2. header  uint8, JSON: [{name, dtype, shape, offset}, ...]
  3. payload uint8, every tensor's bytes at its offset (aligned, so views need no copy)
then sizes (0, 0) ends the sync, and a barrier returns only when every receiver has
loaded every bucket, so the sender's timing covers the whole sync.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from hybrid_engine.sync_group import SyncGroup

Bucket = list[tuple[str, torch.Tensor]]
ALIGN = 64  # bytes; keeps every tensor's offset a multiple of any element size


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack_bucket(bucket: Bucket, device: torch.device) -> tuple[bytes, torch.Tensor]:
    """(JSON header, one uint8 payload on `device`) for a bucket of contiguous tensors."""
    entries, offset = [], 0
    for name, tensor in bucket:
        entries.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                        "shape": list(tensor.shape), "offset": offset})
        offset = _aligned(offset + tensor.numel() * tensor.element_size())
    payload = torch.empty(offset, dtype=torch.uint8, device=device)
    for entry, (_, tensor) in zip(entries, bucket):
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        payload[entry["offset"]: entry["offset"] + flat.numel()].copy_(flat)
    return json.dumps(entries).encode(), payload


def unpack_bucket(header: bytes, payload: torch.Tensor) -> Bucket:
    """Views into `payload` (no copies), named and shaped as the header says."""
    out: Bucket = []
    for entry in json.loads(header):
        dtype = getattr(torch, entry["dtype"])
        numel = 1
        for dim in entry["shape"]:
            numel *= dim
        start = entry["offset"]
        raw = payload[start: start + numel * dtype.itemsize]
        out.append((entry["name"], raw.view(dtype).reshape(entry["shape"])))
    return out


@dataclass
class BroadcastStats:
    """One sync as the sender saw it; `seconds` ends when every receiver has loaded everything."""

    payload_bytes: int = 0
    tensors: int = 0
    buckets: int = 0
    seconds: float = 0.0

    def to_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/seconds": self.seconds, f"{prefix}/bytes_moved": float(self.payload_bytes),
                f"{prefix}/broadcast_bytes": float(self.payload_bytes),
                f"{prefix}/buckets": float(self.buckets), f"{prefix}/tensors": float(self.tensors)}


def _send_sizes(group: SyncGroup, header: int, payload: int) -> None:
    group.broadcast(torch.tensor([header, payload], dtype=torch.int64, device=group.device))


def send_weights(group: SyncGroup | None, stream: Iterable[Bucket]) -> BroadcastStats:
    """Sender side. A trainer rank outside the group passes None: it still drains `stream`
    (the gathers behind it are collectives of the training mesh) and sends nothing."""
    start = time.perf_counter()
    stats = BroadcastStats()
    if group is None:
        for _ in stream:
            pass
        return stats
    if group.rank != 0:
        raise ValueError(f"send_weights: only group rank 0 sends, this is rank {group.rank}")
    for bucket in stream:
        header, payload = pack_bucket(bucket, group.device)
        _send_sizes(group, len(header), payload.numel())
        group.broadcast(torch.frombuffer(bytearray(header), dtype=torch.uint8).to(group.device))
        group.broadcast(payload)
        stats.payload_bytes += payload.numel()
        stats.tensors += len(bucket)
        stats.buckets += 1
        del payload
    _send_sizes(group, 0, 0)
    group.barrier()
    stats.seconds = time.perf_counter() - start
    return stats


def receive_weights(group: SyncGroup) -> Iterator[Bucket]:
    """Receiver side: yields each bucket as it arrives. Load it before asking for the next one;
    a yielded bucket's tensors are views of a fresh buffer, so an engine may keep them."""
    if group.rank == 0:
        raise ValueError("receive_weights: group rank 0 is the sender")
    while True:
        sizes = torch.zeros(2, dtype=torch.int64, device=group.device)
        group.broadcast(sizes)
        header_bytes, payload_bytes = (int(v) for v in sizes.tolist())
        if header_bytes == 0:
            break
        header = torch.empty(header_bytes, dtype=torch.uint8, device=group.device)
        group.broadcast(header)
        payload = torch.empty(payload_bytes, dtype=torch.uint8, device=group.device)
        group.broadcast(payload)
        yield unpack_bucket(header.cpu().numpy().tobytes(), payload)
    group.barrier()
