"""The two-state machine that time-shares one device between training and rollout.

    TRAIN --rollout_mode()--> ROLLOUT
      1. offload optimizer state + grads     (frees room for the gathered buckets)
      2. wake the rollout's weights          (`wake_up(tags=["weights"])`; an engine
                                              without tags is woken fully here)
      3. stream weights bucket by bucket into `rollout.load_weights`
      4. offload the training params, then every colocated engine's state (ref, critic, RM)
      5. wake the rollout's KV cache         (`wake_up(tags=["kv_cache"])`; skipped
                                              for an engine without tags: done in 2)
    ROLLOUT --train_mode()--> TRAIN
      1. `rollout.sleep()`                   (drops KV cache and weights)
      2. reload params, 3. reload optimizer state + grads, 4. reload the colocated engines

Asking for the mode you are in is not an error: it does nothing and returns a report
with `noop=True` (drivers can call `train_mode()` defensively before every update).
Every rank of the training mesh must switch together: step 3 is a collective.

The engine starts in TRAIN and assumes the rollout engine is asleep (put it to sleep
after building it). If a switch raises, the mode becomes unknown (`mode is None`) and
the next switch, either way, runs all its steps; offload steps are idempotent, so
`train_mode()` restores the training state.
"""
from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hybrid_engine.memory import MemorySnapshot, memory_snapshot, release_cached_memory, resolve_device
from hybrid_engine.offload import OffloadReport
from hybrid_engine.protocols import KV_CACHE_TAG, WEIGHTS_TAG, SleepableRollout, accepts_wake_up_tags
from hybrid_engine.training_state import TrainingState
from hybrid_engine.weight_stream import StreamStats


class Mode(enum.Enum):
    TRAIN = "train"
    ROLLOUT = "rollout"


@dataclass(frozen=True)
class SwitchReport:
    """What one switch did. `phases` maps each step, in the order run, to its seconds."""

    target: Mode
    noop: bool
    seconds: float
    offload_bytes: int  # device<->host bytes for params, grads and optimizer state
    stream_bytes: int  # full-weight bytes gathered for the rollout engine
    memory_before: MemorySnapshot
    memory_after: MemorySnapshot
    phases: dict[str, float]
    notes: tuple[str, ...]  # e.g. why 0 bytes were offloaded on a CPU device

    @property
    def bytes_moved(self) -> int:
        return self.offload_bytes + self.stream_bytes

    def to_metrics(self, prefix: str) -> dict[str, float]:
        """Flat float metrics for a step's log, e.g. prefix "hybrid/rollout_mode"."""
        out = {
            f"{prefix}/seconds": self.seconds,
            f"{prefix}/noop": float(self.noop),
            f"{prefix}/bytes_moved": float(self.bytes_moved),
            f"{prefix}/offload_bytes": float(self.offload_bytes),
            f"{prefix}/stream_bytes": float(self.stream_bytes),
            f"{prefix}/mem_allocated_before_bytes": float(self.memory_before.allocated_bytes),
            f"{prefix}/mem_allocated_after_bytes": float(self.memory_after.allocated_bytes),
            f"{prefix}/mem_reserved_before_bytes": float(self.memory_before.reserved_bytes),
            f"{prefix}/mem_reserved_after_bytes": float(self.memory_after.reserved_bytes),
        }
        out.update({f"{prefix}/phase/{name}_seconds": s for name, s in self.phases.items()})
        return out


class HybridEngine:
    """Switches one rank's device between a training engine's state and a rollout engine."""

    def __init__(
        self,
        state: TrainingState,
        rollout: SleepableRollout | None,
        *,
        device: torch.device,
        bucket_bytes: int,
        weight_dtype: torch.dtype,
        offload_params: bool,
        offload_optimizer: bool,
        is_rollout_consumer: bool,
        colocated: Callable[[], list[tuple[str, TrainingState]]] = list,
    ) -> None:
        """Wire one rank's training state to its rollout engine.

        `colocated`: the other training engines of this process (reference, critic, reward model),
        asked at each switch; they are offloaded with the policy in ROLLOUT mode and reloaded with it.
        `state`: the training engine (offload/reload, weight export), see training_state.py.
        `device`: the training device; on CPU offloading moves nothing (reports say so).
        `bucket_bytes`: cap on one bucket of full weights (the transient device memory of a
        sync); a larger tensor travels alone. `weight_dtype`: what the rollout engine loads.
        `is_rollout_consumer`: this rank's rollout takes the weights; `rollout` may be None
        only on a non-consumer rank (it still joins every gather).
        """
        if is_rollout_consumer and rollout is None:
            raise ValueError("HybridEngine: is_rollout_consumer=True needs a rollout engine")
        self.state = state
        self.rollout = rollout
        self.device = resolve_device(device)
        self.offload_params = offload_params
        self.offload_optimizer = offload_optimizer
        self.is_rollout_consumer = is_rollout_consumer
        self.colocated = colocated
        self.bucket_bytes, self.weight_dtype = bucket_bytes, weight_dtype
        self.tagged_wake_up = rollout is not None and accepts_wake_up_tags(rollout)
        self.mode: Mode | None = Mode.TRAIN
        self.last_stream_stats: StreamStats | None = None

    def rollout_mode(self) -> SwitchReport:
        """TRAIN -> ROLLOUT (see the module docstring for the steps); a no-op in ROLLOUT."""
        return self._switch(Mode.ROLLOUT, self._to_rollout)

    def train_mode(self) -> SwitchReport:
        """ROLLOUT -> TRAIN (see the module docstring for the steps); a no-op in TRAIN."""
        return self._switch(Mode.TRAIN, self._to_train)

    def _switch(self, target: Mode, steps: Callable[["_Run"], None]) -> SwitchReport:
        start = time.perf_counter()
        before = memory_snapshot(self.device)
        if self.mode is target:
            note = f"already in {target.name} mode: nothing done"
            return SwitchReport(target, True, time.perf_counter() - start, 0, 0, before, before, {}, (note,))
        run = _Run()
        self.mode = None  # unknown until every step has succeeded
        steps(run)
        self.mode = target
        after = memory_snapshot(self.device)
        notes = tuple(dict.fromkeys(run.notes))  # dedup, keep order
        seconds = time.perf_counter() - start
        return SwitchReport(target, False, seconds, run.offload_bytes, run.stream_bytes, before, after, run.phases, notes)

    def _to_rollout(self, run: "_Run") -> None:
        if self.offload_optimizer:
            run.offload(self.state.offload_optimizer, self.device)
        if self.rollout is not None:
            tags = [WEIGHTS_TAG] if self.tagged_wake_up else None
            run.timed("wake_weights", lambda: self._wake(tags))
        run.timed("stream_weights", self._stream)
        run.stream_bytes = self.last_stream_stats.bytes_streamed if self.last_stream_stats else 0
        if self.offload_params:
            run.offload(self.state.offload_params, self.device)
        for role, state in self.colocated():
            if self.offload_optimizer:
                run.offload(state.offload_optimizer, self.device, role)
            if self.offload_params:
                run.offload(state.offload_params, self.device, role)
        if self.rollout is not None and self.tagged_wake_up:
            run.timed("wake_kv_cache", lambda: self._wake([KV_CACHE_TAG]))

    def _to_train(self, run: "_Run") -> None:
        if self.rollout is not None:
            run.timed("sleep_rollout", self.rollout.sleep)
        if self.offload_params:
            run.offload(self.state.reload_params, None)
        if self.offload_optimizer:
            run.offload(self.state.reload_optimizer, None)
        for role, state in self.colocated():
            if self.offload_params:
                run.offload(state.reload_params, None, role)
            if self.offload_optimizer:
                run.offload(state.reload_optimizer, None, role)

    def _wake(self, tags: list[str] | None) -> None:
        assert self.rollout is not None
        if tags is None:
            self.rollout.wake_up()
        else:
            self.rollout.wake_up(tags=tags)  # type: ignore[call-arg]  # tagged engines only

    def _stream(self) -> None:
        stream = self.state.export_weights(dtype=self.weight_dtype, bucket_bytes=self.bucket_bytes,
                                           consumer=self.is_rollout_consumer)
        for bucket in stream:  # yields nothing on a non-consumer rank, which still gathers
            assert self.rollout is not None
            self.rollout.load_weights(bucket)
        self.last_stream_stats = stream.stats


class _Run:
    """Accumulates one switch's phases, bytes and notes."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.notes: list[str] = []
        self.offload_bytes = 0
        self.stream_bytes = 0

    def timed(self, phase: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        fn()
        self.phases[phase] = time.perf_counter() - start

    def offload(self, fn: Callable[[], OffloadReport], release_on: torch.device | None, role: str = "") -> None:
        """Run an offload/reload; after an offload, hand freed blocks back to the driver."""
        start = time.perf_counter()
        report = fn()
        if release_on is not None and report.bytes_moved:
            release_cached_memory(release_on)
        prefix = f"{role}_" if role else ""
        self.phases[f"{prefix}{report.direction}_{report.what}"] = time.perf_counter() - start
        self.offload_bytes += report.bytes_moved
        if report.note:
            self.notes.append(f"{prefix}{report.direction} {report.what}: {report.note}")
