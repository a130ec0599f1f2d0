"""Move tensor storages to host memory and back, in place.

Why storages, not `p.data = p.data.to("cpu")` or `module.to("cpu")`:
- FSDP2 keeps two tensor objects over one storage per parameter (the DTensor's local
  shard, and the padded flat `_sharded_param_data` that all-gathers read); optimizers key
  their state by parameter identity. Any scheme that swaps tensors must repair all of it.
- On a DTensor parameter, `p.data = x` is silently ignored when `x` is on the same device
  (the local shard is untouched) and rejected ("incompatible tensor type") otherwise.
- `module.to()` does work on FSDP2 (its `_apply` reshards, swaps tensors in place and
  re-pads shards), but it allocates fresh device tensors and pageable host memory on
  every switch and leaves the optimizer state to be handled separately anyway.
Freeing the storage itself (`resize_(0)`, what FSDP does with unsharded parameters) and
refilling it later keeps every view, identity and internal reference valid, with one
mechanism for parameters, gradients and optimizer state. The price: a tensor whose
storage is stashed points at freed memory, and reading it crashes (SIGSEGV on CPU,
illegal address on CUDA) instead of raising; `offload.py` installs guards for the
common paths (forward, optimizer step).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from hybrid_engine.memory import synchronize


def _byte_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A flat uint8 tensor over a whole storage, so any dtype/stride is copied bit-exactly."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class HostBufferPool:
    """Host byte buffers kept between switches and reused by size.

    Pinned allocation (cudaHostAlloc) costs more than the copy it enables, and the
    sizes repeat every step (same model, same optimizer), so buffers are kept until
    `clear()`. Host memory held equals the largest set of bytes ever stashed at once.
    """

    def __init__(self, *, pin_memory: bool) -> None:
        self.pin_memory = pin_memory
        self._free: dict[int, list[torch.Tensor]] = defaultdict(list)

    def take(self, nbytes: int) -> torch.Tensor:
        """A host uint8 buffer of exactly `nbytes`, reused when one is free."""
        free = self._free[nbytes]
        if free:
            return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8, device="cpu", pin_memory=self.pin_memory)

    def give(self, buffer: torch.Tensor) -> None:
        """Return a buffer once nothing (no in-flight copy) reads it any more."""
        self._free[buffer.numel()].append(buffer)

    @property
    def idle_bytes(self) -> int:
        """Bytes held in buffers not in use."""
        return sum(n * len(bufs) for n, bufs in self._free.items())

    def clear(self) -> None:
        """Drop idle buffers (host memory returns when the last reference goes)."""
        self._free.clear()


class StorageStash:
    """Holds the bytes of some storages in host buffers while the storages are freed."""

    def __init__(self, pool: HostBufferPool) -> None:
        self._pool = pool
        self._entries: list[tuple[torch.UntypedStorage, torch.Tensor]] = []

    @property
    def is_stashed(self) -> bool:
        return bool(self._entries)

    @property
    def stashed_bytes(self) -> int:
        return sum(buf.numel() for _, buf in self._entries)

    @torch.no_grad()
    def stash(self, tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
        """Copy each distinct storage behind `tensors` to host and free it; return (bytes, storages).

        Storages shared by several tensors (views, tied weights) are moved once; empty
        ones (e.g. a rank's zero-size shard) are skipped.
        """
        if self._entries:
            raise RuntimeError("StorageStash.stash: already holding stashed storages; restore() first")
        storages: dict[int, torch.UntypedStorage] = {}
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.nbytes() == 0:
                continue
            if not storage.resizable():
                raise TypeError(
                    f"StorageStash.stash: a {tuple(tensor.shape)} {tensor.dtype} tensor on {tensor.device} has a "
                    "non-resizable storage (from_blob/numpy/shared memory?), so it cannot be freed in place"
                )
            storages.setdefault(storage.data_ptr(), storage)
        devices: set[torch.device] = set()
        for storage in storages.values():
            buffer = self._pool.take(storage.nbytes())
            buffer.copy_(_byte_view(storage), non_blocking=True)
            self._entries.append((storage, buffer))
            devices.add(storage.device)
        for device in devices:  # host buffers must be complete before the source is freed
            synchronize(device)
        for storage, _ in self._entries:
            storage.resize_(0)
        return self.stashed_bytes, len(self._entries)

    @torch.no_grad()
    def restore(self) -> tuple[int, int]:
        """Reallocate each freed storage at its old size and copy its bytes back; return (bytes, storages)."""
        moved, count = self.stashed_bytes, len(self._entries)
        devices: set[torch.device] = set()
        for storage, buffer in self._entries:
            storage.resize_(buffer.numel())
            _byte_view(storage).copy_(buffer, non_blocking=True)
            devices.add(storage.device)
        for device in devices:  # the copies must land before the host buffers are reused
            synchronize(device)
        for _, buffer in self._entries:
            self._pool.give(buffer)
        self._entries = []
        return moved, count
