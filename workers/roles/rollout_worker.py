"""The rollout half of split placement: a rollout engine in its own pool, fed weights by broadcast.

Nothing else shares its device, so it never sleeps; after every actor update trainer rank 0
broadcasts the full weights over a weight-sync group (hybrid_engine.sync_group) and each
rollout rank loads them bucket by bucket. The driver calls `sync_weights` here and on the
actor at the same time (the two halves of one broadcast), likewise `weight_group_diffs`.
"""
from __future__ import annotations

import time

import torch
from omegaconf import DictConfig

from hybrid_engine import SyncGroup, connect_sync_store, group_param_diffs, join_sync_group, receive_weights
from workers.batch import Batch
from workers.rollout.base import SamplingParams
from workers.rollout.factory import build_rollout
from workers.rollout.stream_driver import StreamDriver
from workers.rollout.streaming import FinishedGroup, request_for
from workers.rollout.weight_updates import WeightMailbox
from workers.runtime import Dispatch, Worker, WorkerContext, register


def max_seq_len(cfg: DictConfig) -> int:
    """What a rollout engine must hold: the longest prompt plus the longest response."""
    return cfg.data.max_prompt_length + cfg.rollout.max_new_tokens


def rank_sampling(params: SamplingParams, rank: int) -> SamplingParams:
    """Each data-parallel rank samples with its own seed, derived from the driver's."""
    return SamplingParams(**{**params.__dict__, "seed": params.seed * 7919 + rank})


class RolloutWorker(Worker):
    def __init__(self, ctx: WorkerContext, cfg: DictConfig, pad_token_id: int):
        super().__init__(ctx)
        self.cfg = cfg
        self.rollout = build_rollout(cfg.rollout, cfg.model.path, device=ctx.device, max_seq_len=max_seq_len(cfg),
                                     pad_token_id=pad_token_id, seed=cfg.trainer.seed + ctx.rank)
        self.sync_group: SyncGroup | None = None
        # trainer.mode=async: weights arrive while generating (the "weights" concurrency group) and wait here
        self.mailbox = (WeightMailbox(self._load, version=0, partial_rollout=cfg.rollout.partial_rollout)
                        if cfg.trainer.mode == "async" else None)
        self.stream: StreamDriver | None = None  # rollout.stream: request-level generation in a thread

    def _load(self, weights) -> None:
        self.rollout.load_weights(weights)
        self.rollout.wake_up()  # closes an engine's update session (vLLM); allocates the KV cache

    @register(Dispatch.ONE_TO_ALL)
    def join_weight_group(self, host: str, port: int, world_size: int) -> None:
        """Collective with trainer rank 0 (group rank 0); this rank is 1 + its rollout rank."""
        timeout = self.cfg.cluster.init_timeout_s
        store = connect_sync_store(host, port, timeout)
        self.sync_group = join_sync_group(store, rank=1 + self.rank, world_size=world_size, device=self.device,
                                          timeout_s=timeout)

    def _group(self) -> SyncGroup:
        if self.sync_group is None:
            raise RuntimeError("rollout worker: join_weight_group() first (Roles does it at start-up)")
        return self.sync_group

    @register(Dispatch.ONE_TO_ALL, concurrency_group="weights")
    def sync_weights(self, version: int | None = None) -> dict[str, float]:
        """Receive the trainer's weights (policy `version`). Loaded bucket by bucket, returning when all are in;
        with a mailbox (async) received whole and handed over, so a generate call running meanwhile takes
        them between two decode steps."""
        start = time.perf_counter()
        if self.mailbox is not None:
            weights = [pair for bucket in receive_weights(self._group()) for pair in bucket]
            at_once = self.mailbox.deliver(self.mailbox.version + 1 if version is None else version, weights)
            return {"sync/receive_seconds": time.perf_counter() - start, "sync/tensors_received": float(len(weights)),
                    "async/applied_while_idle": float(at_once)}
        tensors = 0
        for bucket in receive_weights(self._group()):
            self.rollout.load_weights(bucket)
            tensors += len(bucket)
        self.rollout.wake_up()
        return {"sync/receive_seconds": time.perf_counter() - start, "sync/tensors_received": float(tensors)}

    @register(Dispatch.ONE_TO_ALL, concurrency_group="weights")
    def weight_group_diffs(self) -> dict[str, float]:
        """Largest |trainer - rollout| per parameter group, from a second broadcast that is compared, not loaded."""
        received = (pair for bucket in receive_weights(self._group()) for pair in bucket)
        if not hasattr(self.rollout, "hf_weight"):
            for _ in received:  # the sender still needs every bucket taken
                pass
            return {}
        return group_param_diffs(received, self.rollout.hf_weight)

    @register(Dispatch.DP)
    def generate(self, batch: Batch, params: SamplingParams) -> Batch:
        params = rank_sampling(params, self.rank)
        if self.mailbox is None:
            return self.rollout.generate(batch, params)
        with self.mailbox.generating() as updates:
            if getattr(self.rollout, "supports_updates_mid_generation", False):
                return self.rollout.generate(batch, params, updates=updates)
            out = self.rollout.generate(batch, params)  # vLLM: new weights wait for the next call
            out["token_versions"] = torch.where(out["response_mask"].bool(), updates.version, -1)
            return out

    # --- request-level generation (rollout.stream, workers/rollout/streaming.py) ------------------------

    def _driver(self) -> StreamDriver:
        if self.stream is None:
            if not getattr(self.rollout, "supports_streaming", False):
                raise RuntimeError(f"rollout rank {self.rank}: this engine has no request-level generation")
            self.stream = StreamDriver(self.rollout, self.mailbox, f"rollout rank {self.rank}")
        return self.stream

    @register(Dispatch.ONE_TO_ALL)
    def stream_start(self, params: SamplingParams) -> None:
        """Start decoding whatever `stream_submit` queues (this rank's own sampling seed)."""
        self._driver().start(rank_sampling(params, self.rank))

    @register(Dispatch.ONE_TO_ALL)
    def stream_submit(self, prompts: Batch, seed: int) -> None:
        """Queue prompt rows rank, rank + world_size, ... (one request each, its uid the request id)."""
        mine = list(range(self.rank, len(prompts), self.world_size))
        self._driver().submit([request_for(prompts.index([i]), seed=seed * 7919 + i) for i in mine])

    @register(Dispatch.ONE_TO_ALL)
    def stream_collect(self, min_groups: int, timeout_s: float) -> list[FinishedGroup]:
        """Groups finished since the last collect (waiting at most timeout_s for min_groups)."""
        return self._driver().collect(min_groups, timeout_s)

    @register(Dispatch.ONE_TO_ALL)
    def stream_stop(self) -> list[str]:
        """End the stream; the uids it dropped unfinished."""
        return self.stream.stop() if self.stream is not None else []
