"""Where the policy's rollout engine lives, as a component of the actor role (not a subclass per placement).

- `LocalRollout` (colocated): a rollout engine in this process; the hybrid engine time-shares
  the device and streams the training engine's weights into it in-process.
- `RemoteRollout` (split): the rollout engines live in a pool of their own; this rank gathers
  the weights (a collective over the training mesh) and trainer rank 0 broadcasts them over a
  weight-sync group (workers/roles/rollout_worker.py receives). The device is never shared,
  so the training state stays resident.

Both offer the same calls, so the actor role reads the same either way.
"""
from __future__ import annotations

from typing import Protocol

import torch
from omegaconf import DictConfig

from hybrid_engine import (HybridEngine, SyncGroup, group_param_diffs, join_sync_group, open_sync_store,
                           send_weights)
from workers.batch import Batch
from workers.dtypes import to_dtype
from workers.roles.colocation import colocated_engines, set_train_mode_switch
from workers.engines.base import TrainingEngine
from workers.rollout.base import RolloutEngine, SamplingParams
from workers.runtime.host import ray_node_ip


class RolloutPlacement(Protocol):
    rollout: RolloutEngine | None

    def to_train(self) -> None: ...

    def publish(self) -> dict[str, float]: ...

    def generate(self, batch: Batch, params: SamplingParams) -> Batch: ...

    def group_diffs(self) -> dict[str, float]: ...


def _weights(engine: TrainingEngine, cfg: DictConfig, consumer: bool):
    return engine.export_weights(dtype=to_dtype(cfg.rollout.dtype), bucket_bytes=cfg.hybrid.bucket_bytes,
                                 consumer=consumer)


class LocalRollout:
    def __init__(self, engine: TrainingEngine, rollout: RolloutEngine, cfg: DictConfig, device: torch.device):
        self.engine, self.rollout, self.cfg = engine, rollout, cfg
        self.hybrid = HybridEngine(engine, rollout, device=device, bucket_bytes=cfg.hybrid.bucket_bytes,
                                   weight_dtype=to_dtype(cfg.rollout.dtype), offload_params=cfg.hybrid.offload_params,
                                   offload_optimizer=cfg.hybrid.offload_optimizer, is_rollout_consumer=True,
                                   colocated=colocated_engines)
        set_train_mode_switch(self.hybrid.train_mode)

    def to_train(self) -> None:
        self.hybrid.train_mode()

    def publish(self) -> dict[str, float]:
        """Enter ROLLOUT mode: stream the current training weights into this rank's rollout engine."""
        return self.hybrid.rollout_mode().to_metrics("sync")

    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        self.hybrid.rollout_mode()
        return self.rollout.generate(batch, params)

    def group_diffs(self) -> dict[str, float]:
        """Largest |trainer - rollout| per parameter group (a rollout engine without `hf_weight` gives {}).

        Run in whichever mode the step left (the rollout engine must stay awake to be compared); the
        training weights must be resident for the gathers, which holds on CPU and with params kept on GPU.
        """
        reference = (pair for bucket in _weights(self.engine, self.cfg, True) for pair in bucket)
        if not hasattr(self.rollout, "hf_weight"):
            for _ in reference:  # every rank must still join the gathers
                pass
            return {}
        return group_param_diffs(reference, self.rollout.hf_weight)


class RemoteRollout:
    rollout = None

    def __init__(self, engine: TrainingEngine, cfg: DictConfig, device: torch.device, rank: int):
        self.engine, self.cfg, self.device, self.rank = engine, cfg, device, rank
        self.sync_group: SyncGroup | None = None
        self._store = None

    def open_group(self) -> tuple[str, int]:
        """Host the weight-sync rendezvous on this node (trainer rank 0); (address, port) for the rollout ranks."""
        host = ray_node_ip()
        self._store, port = open_sync_store(host, self.cfg.cluster.init_timeout_s)
        return host, port

    def join_group(self, world_size: int) -> None:
        if self._store is None:
            raise RuntimeError("split actor: open_weight_group() first")
        self.sync_group = join_sync_group(self._store, rank=0, world_size=world_size, device=self.device,
                                          timeout_s=self.cfg.cluster.init_timeout_s)

    def to_train(self) -> None:
        pass  # the device is never shared: nothing to switch

    def publish(self) -> dict[str, float]:
        """Broadcast the current weights; returns once every rollout rank has loaded them (rank 0's figures)."""
        stream = _weights(self.engine, self.cfg, consumer=self.sync_group is not None)
        stats = send_weights(self.sync_group, stream)
        return {**stats.to_metrics("sync"), "sync/stream_bytes": float(stream.stats.bytes_streamed),
                "sync/gather_seconds": stream.stats.gather_seconds}

    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        raise RuntimeError("split placement: the actor has no rollout engine; generate on Roles.rollout")

    def group_diffs(self) -> dict[str, float]:
        """The sending half of the rollout pool's weight comparison: the same broadcast, compared there."""
        self.publish()
        return {}
