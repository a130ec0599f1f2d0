"""The training-engine seam: what roles and the hybrid engine may ask of an engine, and nothing else.

Two implementations: FSDP2 (workers/engines/fsdp2) and Megatron-core (workers/engines/megatron).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from hybrid_engine.offload import OffloadReport
from hybrid_engine.weight_stream import Bucket
from workers.batch import Batch
from workers.engines import LossFn


@dataclass(frozen=True)
class EngineMesh:
    """This rank's place in the engine's parallel layout.

    Ranks of one data-parallel group (same dp_rank) receive the same rows; one of them, the last
    pipeline stage's TP rank 0, returns results (the mesh-aware DP_MESH dispatch reads this).
    """

    dp_rank: int
    dp_size: int
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1

    @property
    def collect(self) -> bool:
        return self.tp_rank == 0 and self.pp_rank == self.pp_size - 1

    def dispatch_info(self) -> dict:
        return {"dp_rank": self.dp_rank, "dp_size": self.dp_size, "collect": self.collect}


class TrainingEngine(Protocol):
    """Every method is collective over the engine's mesh: all its ranks call it, with their rows."""

    device: torch.device
    mesh: EngineMesh

    def compute_log_probs(self, batch: Batch, *, temperature: float, micro_batch_size: int,
                          with_entropy: bool) -> dict[str, Tensor]: ...

    def compute_values(self, batch: Batch, *, micro_batch_size: int) -> Tensor: ...

    def compute_scores(self, batch: Batch, *, micro_batch_size: int) -> Tensor: ...

    def train_mini_batch(self, batch: Batch, loss_fn: LossFn, *, micro_batch_size: int, temperature: float | None,
                         with_entropy: bool) -> dict[str, float]: ...

    # the hybrid engine's TrainingState: offload/reload and the HF-named weight export
    def offload_params(self) -> OffloadReport: ...

    def reload_params(self) -> OffloadReport: ...

    def offload_optimizer(self) -> OffloadReport: ...

    def reload_optimizer(self) -> OffloadReport: ...

    def export_weights(self, *, dtype: torch.dtype, bucket_bytes: int, consumer: bool) -> Iterable[Bucket]: ...

    def save_checkpoint(self, directory: str) -> None: ...

    def load_checkpoint(self, directory: str) -> None: ...
