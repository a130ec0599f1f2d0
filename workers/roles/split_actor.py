"""The trainer half of split placement: the same FSDP2 policy as the hybrid actor, without a rollout engine.

Its device is never shared, so it stays in TRAIN mode (no offloading, no mode switches).
Weights leave by broadcast: every rank gathers the full tensors bucket by bucket (the
gathers are FSDP collectives), and rank 0, the only trainer member of the weight-sync
group, broadcasts each bucket to the rollout pool (workers/roles/rollout_worker.py).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from hybrid_engine import SyncGroup, WeightStream, join_sync_group, open_sync_store, send_weights
from workers.batch import Batch
from workers.roles.actor_rollout import ActorRolloutWorker
from workers.rollout.base import RolloutEngine, SamplingParams
from workers.runtime import Dispatch, WorkerContext, register
from workers.runtime.host import ray_node_ip


class SplitActorWorker(ActorRolloutWorker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig, pad_token_id: int):
        super().__init__(ctx, cfg, pad_token_id)
        self.sync_group: SyncGroup | None = None
        self._store = None

    def _build_rollout(self, ctx: WorkerContext, cfg: DictConfig, pad_token_id: int) -> RolloutEngine | None:
        return None

    @register(Dispatch.RANK_ZERO)
    def open_weight_group(self) -> tuple[str, int]:
        """Host the weight-sync rendezvous on this node; returns (address, port) for the rollout ranks."""
        host = ray_node_ip()
        self._store, port = open_sync_store(host, self.cfg.cluster.init_timeout_s)
        return host, port

    @register(Dispatch.RANK_ZERO)
    def join_weight_group(self, world_size: int) -> None:
        """Collective with every rollout rank; this rank is group rank 0, the sender."""
        if self._store is None:
            raise RuntimeError("split actor: open_weight_group() first")
        self.sync_group = join_sync_group(self._store, rank=0, world_size=world_size, device=self.device,
                                          timeout_s=self.cfg.cluster.init_timeout_s)

    def _send(self) -> dict[str, float]:
        stream = WeightStream(self.engine.module, bucket_bytes=self.cfg.hybrid.bucket_bytes,
                              dtype=getattr(torch, self.cfg.rollout.dtype), consumer=self.sync_group is not None)
        stats = send_weights(self.sync_group, stream)
        return {**stats.to_metrics("sync"), "sync/stream_bytes": float(stream.stats.bytes_streamed),
                "sync/gather_seconds": stream.stats.gather_seconds}

    @register(Dispatch.ONE_TO_ALL)
    def sync_weights(self) -> dict[str, float]:
        """Broadcast the current weights; returns once every rollout rank has loaded them (rank 0's figures)."""
        return self._send()

    @register(Dispatch.ONE_TO_ALL)
    def weight_group_diffs(self) -> dict[str, float]:
        """The sending half of the rollout pool's weight diff: the same broadcast, compared there."""
        self._send()
        return {}

    @register(Dispatch.DP)
    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        raise RuntimeError("split placement: the actor has no rollout engine; generate on Roles.rollout")
