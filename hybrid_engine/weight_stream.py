"""Stream a (possibly FSDP2-sharded) module's full weights, bucket by bucket, in HF naming.

`for bucket in WeightStream(...): rollout.load_weights(bucket)` hands a rollout engine
every parameter as a full tensor without ever holding the whole model unsharded.

Collectives: gathering a DTensor (`full_tensor()`) is an all-gather, so every rank of
the mesh must iterate the stream to the end, in the same order. The bucket plan depends
only on global shapes, names and the target dtype, so it is identical on all ranks.
Ranks that host no rollout engine pass `consumer=False`: they join every gather, drop
the result, and yield nothing (their `for` body never runs).

Memory: tensors are cast to the target dtype on the local shard *before* the gather
(half the traffic for fp32 -> bf16) and gathered one at a time into the current bucket.
A yielded list is emptied when the next bucket is requested, so at most one bucket of
full tensors is referenced by the stream and the caller's loop variable; copy what you
want to keep (`list(bucket)`). Yielded tensors never share storage with the training
parameters (offloading frees those in place), so an engine may keep them.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hybrid_engine.fsdp import local_tensor, reshard_fsdp_modules, shares_storage
from hybrid_engine.memory import synchronize
from hybrid_engine.names import hf_name

Bucket = list[tuple[str, torch.Tensor]]


def plan_buckets(sizes: Sequence[int], bucket_bytes: int) -> list[list[int]]:
    """Group consecutive tensor sizes into buckets of at most `bucket_bytes`.

    Greedy in order; a tensor larger than `bucket_bytes` goes alone in its own bucket.
    Returns lists of indices into `sizes`.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"plan_buckets: bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for i, size in enumerate(sizes):
        if current and current_bytes + size > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += size
    if current:
        buckets.append(current)
    return buckets


@dataclass
class StreamStats:
    """Filled while a stream runs; final once it is exhausted. Every rank counts the bytes it gathered."""

    bytes_streamed: int
    tensors: int
    buckets: int
    largest_bucket_bytes: int
    gather_seconds: float  # time inside the stream: casts and gathers
    seconds: float  # first request to exhaustion, consumer's load time included, device synced


class WeightStream:
    """An iterable of buckets `[(hf_name, full_tensor), ...]` over a module's parameters."""

    def __init__(self, module: nn.Module, *, bucket_bytes: int, dtype: torch.dtype, consumer: bool) -> None:
        self.module = module
        self.bucket_bytes = bucket_bytes
        self.dtype = dtype
        self.consumer = consumer
        self.stats = StreamStats(0, 0, 0, 0, 0.0, 0.0)

    def _entries(self) -> list[tuple[str, nn.Parameter]]:
        reshard_fsdp_modules(self.module)  # registered params must be the sharded ones
        entries = [(hf_name(name), p) for name, p in self.module.named_parameters()]
        seen: set[str] = set()
        for name, _ in entries:
            if name in seen:
                raise ValueError(f"WeightStream: two parameters map to the HF name {name!r}")
            seen.add(name)
        return entries

    @torch.no_grad()
    def _full(self, param: torch.Tensor) -> torch.Tensor:
        cast = param.to(self.dtype)  # on the local shard for a DTensor, before the gather
        full = cast.full_tensor() if isinstance(cast, DTensor) else cast
        full = full.detach().contiguous()
        if shares_storage(full, local_tensor(param)):  # same dtype on one rank: a view of live weights
            full = full.clone()
        return full

    def __iter__(self) -> Iterator[Bucket]:
        start = time.perf_counter()
        device = None
        self.stats = StreamStats(0, 0, 0, 0, 0.0, 0.0)
        entries = self._entries()
        itemsize = self.dtype.itemsize
        plan = plan_buckets([p.numel() * itemsize for _, p in entries], self.bucket_bytes)
        bucket: Bucket = []
        for indices in plan:
            bucket.clear()  # drop the previous bucket's tensors before gathering the next
            bucket = []
            gather_start = time.perf_counter()
            for i in indices:
                name, param = entries[i]
                full = self._full(param)
                device = full.device
                self.stats.tensors += 1
                self.stats.bytes_streamed += full.numel() * full.element_size()
                if self.consumer:
                    bucket.append((name, full))
                del full
            self.stats.gather_seconds += time.perf_counter() - gather_start
            self.stats.buckets += 1
            bucket_bytes = sum(entries[i][1].numel() * itemsize for i in indices)
            self.stats.largest_bucket_bytes = max(self.stats.largest_bucket_bytes, bucket_bytes)
            if self.consumer:
                yield bucket
        bucket.clear()
        if device is not None:
            synchronize(device)
        self.stats.seconds = time.perf_counter() - start
