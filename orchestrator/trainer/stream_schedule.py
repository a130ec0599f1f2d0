"""trainer.mode=async with rollout.stream=true: the rollout pool generates request by request.

Instead of queued generate calls (one batch in, one batch out), each rollout rank runs a stream
(workers/rollout/streaming.py): the producer keeps rollout.async_calls batches of prompts submitted, each
prompt joins the engine as rows free up (continuous batching), and each group comes back as soon as its
last sample ends, to be scored and buffered. A step trains on the first data.train_batch_size groups the
buffer has, so a few long samples no longer hold back a whole batch, and the engine never idles between
batches. Everything else is AsyncSchedule's: the staleness bound on the oldest token, regenerate/drop,
and exactly-once checkpoints (prompts submitted and not yet returned are saved to be generated again).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orchestrator.trainer.async_schedule import AsyncSchedule, concat_prompts, split_groups, split_rows, \
    stamp_oldest_token
from workers.batch import Batch
from workers.rollout.layout import concat_rollouts
from workers.rollout.streaming import finished_batch

if TYPE_CHECKING:
    from orchestrator.trainer.loop import RLTrainer

POLL_S = 0.25  # one collect waits at most this long on each rank (ranks answer together)


class StreamSchedule(AsyncSchedule):
    def __init__(self) -> None:
        super().__init__()
        self.submitted: dict[str, tuple[Batch, int]] = {}  # uid -> (prompt row, version at submission)
        self.started = False
        self.submissions = 0  # stream_submit calls so far (each has its own sampling seed)
        self.last_collect = time.perf_counter()

    def take(self, trainer: "RLTrainer", m: dict[str, float]) -> Batch:
        batch = super().take(trainer, m)
        m["async/streamed"] = 1.0
        return batch

    def _in_flight(self) -> int:
        return len(self.submitted)

    def _launch(self, trainer: "RLTrainer", picked: int) -> None:
        """Top the stream up to rollout.async_calls x data.train_batch_size prompts in flight, prompt by prompt:
        regenerations first, then the rest of the last batch drawn, then a new batch from the prompt stream."""
        want = trainer.cfg.data.train_batch_size
        if not self.started:
            trainer.rollout.stream_start(trainer.rollout_params(0, 0))
            self.started = True
        rows: list[Batch] = []
        target = trainer.cfg.rollout.async_calls * want
        while self._in_flight() + len(rows) < target and self._needed(trainer, picked) - len(rows) > 0:
            if not self.redo:
                prompts, _ = trainer.draw_prompts(self.launches, 1)
                self.launches += 1
                drawn = split_rows(prompts)
                self.prompt_rows.update(zip(prompts.non_tensors["uid"], drawn))
                self.redo.extend(drawn)
            rows.append(self.redo.popleft())
        if not rows:
            return
        prompts = concat_prompts(rows, trainer.tok.pad_token_id)
        self.submissions += 1
        trainer.rollout.stream_submit(prompts, trainer.rollout_params(self.submissions, 0).seed)
        for uid, row in zip(prompts.non_tensors["uid"], rows):
            self.submitted[uid] = (row, trainer.policy_version)

    def _collect(self, trainer: "RLTrainer", *, block: bool) -> None:
        deadline = time.monotonic() + trainer.cfg.cluster.rpc_timeout_s
        while True:
            groups = [g for rank in trainer.rollout.stream_collect(1 if block else 0, POLL_S if block else 0.0)
                      for g in rank]
            if groups or not block:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout stream: no group finished within cluster.rpc_timeout_s="
                                   f"{trainer.cfg.cluster.rpc_timeout_s} s ({len(self.submitted)} prompts submitted)")
        if not groups:
            return
        now = time.perf_counter()
        seconds, self.last_collect = now - self.last_collect, now
        parts, prompts, versions = [], [], []
        for group in groups:
            row, version = self.submitted.pop(group.request_id)
            parts.append(finished_batch(row, group, max_new_tokens=trainer.cfg.rollout.max_new_tokens,
                                        pad_token_id=trainer.tok.pad_token_id, seconds=seconds))
            prompts.append(row)
            versions.append(version)
        out = concat_rollouts(parts, trainer.tok.pad_token_id)
        prompt_batch = concat_prompts(prompts, trainer.tok.pad_token_id)
        out = stamp_oldest_token(trainer.finish_rollout(prompt_batch, out, min(versions)), min(versions))
        self.groups.extend(split_groups(out))

    def save(self, directory) -> None:
        pending = [row for row, _ in self.submitted.values()]
        self._save(directory, pending)

    def load(self, directory) -> None:
        super().load(directory)
        self.submitted.clear()
        self.started = False
