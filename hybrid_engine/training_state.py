"""What the hybrid engine needs from a training engine: offload/reload its state and export its weights.

Any training engine (FSDP2, Megatron, a test's plain module) is a `TrainingState`; the hybrid
engine never sees a module or an optimizer directly. `ModuleState` is the implementation for a
torch module (plain or FSDP2-sharded) and its optimizer.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn

from hybrid_engine.offload import OffloadReport, TrainingStateOffloader
from hybrid_engine.weight_stream import Bucket, WeightStream


class TrainingState(Protocol):
    def offload_params(self) -> OffloadReport: ...

    def reload_params(self) -> OffloadReport: ...

    def offload_optimizer(self) -> OffloadReport: ...

    def reload_optimizer(self) -> OffloadReport: ...

    def export_weights(self, *, dtype: torch.dtype, bucket_bytes: int, consumer: bool) -> Iterable[Bucket]:
        """Buckets of (HF name, full tensor); collective over the engine's mesh; `.stats` once exhausted."""
        ...


class OffloadsWithOffloader:
    """The four offload calls of a TrainingState, served by `self.offloader` (a TrainingStateOffloader)."""

    offloader: TrainingStateOffloader

    def offload_params(self) -> OffloadReport:
        return self.offloader.offload_params()

    def reload_params(self) -> OffloadReport:
        return self.offloader.reload_params()

    def offload_optimizer(self) -> OffloadReport:
        return self.offloader.offload_optimizer()

    def reload_optimizer(self) -> OffloadReport:
        return self.offloader.reload_optimizer()


class ModuleState(OffloadsWithOffloader):
    """A module (plain or FSDP2) and its optimizer (or None) as a TrainingState."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device) -> None:
        self.module = module
        self.offloader = TrainingStateOffloader.for_device(module, optimizer, device)

    def export_weights(self, *, dtype: torch.dtype, bucket_bytes: int, consumer: bool) -> WeightStream:
        return WeightStream(self.module, bucket_bytes=bucket_bytes, dtype=dtype, consumer=consumer)
