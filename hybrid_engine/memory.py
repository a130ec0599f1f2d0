"""Device memory accounting and the few device calls the mode switch needs.

On CUDA the numbers are the caching allocator's (`memory_allocated` / `memory_reserved`);
on CPU there is no device allocator, so both fields hold the process's resident set size
and `source` says so. Compare snapshots only when their `source` matches.
"""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory in use at one instant. `reserved_bytes` >= `allocated_bytes` on CUDA; equal on CPU."""

    allocated_bytes: int
    reserved_bytes: int
    source: str  # "cuda_caching_allocator", "accelerator", "process_rss" or "peak_rss"


def resolve_device(device: torch.device | str) -> torch.device:
    """Give an index-less accelerator device its current index: tensors report `cuda:0`, never `cuda`."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "meta") and device.index is None:
        return torch.device(device.type, torch.accelerator.current_device_index())
    return device


def moves_to_host(device: torch.device) -> bool:
    """Whether offloading from `device` moves anything: a CPU device already is host memory."""
    return device.type != "cpu"


def _process_rss() -> MemorySnapshot:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    return MemorySnapshot(rss, rss, "process_rss")
    except OSError:
        pass
    # No /proc (macOS): only the peak is available; kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024
    return MemorySnapshot(peak, peak, "peak_rss")


def memory_snapshot(device: torch.device) -> MemorySnapshot:
    """Allocated/reserved bytes on `device` (the process RSS when the device is the CPU)."""
    if device.type == "cuda":
        return MemorySnapshot(
            torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device), "cuda_caching_allocator"
        )
    if device.type == "cpu":
        return _process_rss()
    return MemorySnapshot(
        torch.accelerator.memory_allocated(device), torch.accelerator.memory_reserved(device), "accelerator"
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` (async copies, collectives) so timings and host buffers are final."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        torch.accelerator.synchronize(device)


def release_cached_memory(device: torch.device) -> None:
    """Return freed blocks to the driver so another allocator (e.g. vLLM's) can take them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type != "cpu":
        torch.accelerator.empty_cache()
