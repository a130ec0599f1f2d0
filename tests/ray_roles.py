"""Small roles used only by the runtime tests (importable by Ray workers via PYTHONPATH)."""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from workers.batch import Batch
from workers.runtime import Dispatch, Worker, register


class EchoRole(Worker):
    def __init__(self, ctx, tag: str):
        super().__init__(ctx)
        self.tag = tag

    @register(Dispatch.ONE_TO_ALL)
    def whoami(self) -> dict:
        return {"role": self.ctx.role, "rank": self.rank, "world": self.world_size, "pid": os.getpid(),
                "tag": self.tag, "env_rank": int(os.environ["RANK"]), "local_rank": int(os.environ["LOCAL_RANK"])}

    @register(Dispatch.ONE_TO_ALL)
    def all_reduce_rank(self) -> float:
        t = torch.tensor([float(self.rank + 1)])
        dist.all_reduce(t)
        return float(t.item())

    @register(Dispatch.RANK_ZERO)
    def only_rank_zero(self) -> int:
        return self.rank

    @register(Dispatch.DP)
    def double(self, batch: Batch) -> Batch:
        out = Batch.from_dict({"y": batch["x"] * 2, "rank": torch.full((len(batch),), self.rank)},
                              non_tensors={"uid": batch.non_tensors["uid"]})
        return out

    @register(Dispatch.DP, blocking=False)
    def double_async(self, batch: Batch) -> Batch:
        return self.double(batch)

    @register(Dispatch.DP)
    def chunk_len(self, batch: Batch) -> int:
        return len(batch)

    @register(Dispatch.DP)
    def chunk_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    @register(Dispatch.ONE_TO_ALL)
    def sleep_then_reduce(self, seconds: float) -> float:
        time.sleep(seconds)
        t = torch.ones(1)
        dist.all_reduce(t)
        return float(t.item())

    @register(Dispatch.ONE_TO_ALL)
    def fail_on(self, rank: int) -> int:
        if self.rank == rank:
            raise ValueError(f"bad input seen on rank {self.rank}")
        return self.rank

    @register(Dispatch.ONE_TO_ALL)
    def pid(self) -> int:
        return os.getpid()


class MeshRole(Worker):
    """Pretends ranks (0,1) and (2,3) are tensor-parallel pairs: two DP groups, rank 0 of each returns."""

    @register(Dispatch.ONE_TO_ALL)
    def mesh_info(self) -> dict:
        return {"dp_rank": self.rank // 2, "dp_size": self.world_size // 2, "collect": self.rank % 2 == 0}

    @register(Dispatch.DP_MESH)
    def tag_rows(self, batch: Batch) -> Batch:
        return Batch.from_dict({"x": batch["x"], "rank": torch.full((len(batch),), self.rank)})
