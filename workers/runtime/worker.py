"""What a role sees of the runtime: its rank, the world, its device, its data-parallel place."""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch

from workers.runtime.dispatch import Dispatch, register


@dataclass(frozen=True)
class WorkerContext:
    role: str
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # torch.distributed backend: gloo on CPU, nccl on GPU


class Worker:
    """Base class of every role. Subclasses take `(ctx, **kwargs)` and `@register` their methods.

    Roles that shard data over a sub-mesh (tensor/pipeline parallel) override `mesh_info` so
    the `DP_MESH` dispatch knows which data-parallel group each rank belongs to and which
    single rank of that group returns results.
    """

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @register(Dispatch.ONE_TO_ALL)
    def mesh_info(self) -> dict:
        """(dp_rank, dp_size, collect): plain data parallelism by default."""
        return {"dp_rank": self.rank, "dp_size": self.world_size, "collect": True}

    @register(Dispatch.ONE_TO_ALL)
    def peak_memory_bytes(self) -> int:
        """Peak RSS of this process (ru_maxrss: KiB on Linux, bytes on macOS); the driver sums them."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
