"""trainer.mode=async: the rollout pool never waits for the trainer, and the trainer never waits to publish.

A producer keeps `rollout.async_calls` generate calls queued on the rollout pool (split placement), one batch
of prompts each, and only as many as the remaining steps will train. Finished calls are scored and split into
groups (one prompt's rollout.n samples) in a buffer; each step takes data.train_batch_size groups, oldest
first. After the update the trainer publishes the new weights at once: a generate call running meanwhile takes
them between two decode steps (workers/rollout/weight_updates.py), its unfinished sequences continuing or
restarting (rollout.partial_rollout), every token stamped with the version that sampled it.

Staleness bound: a group whose oldest token is more than rollout.max_staleness versions behind the weights
being trained is never trained on; it is counted and its prompt generated again (rollout.on_stale=regenerate)
or dropped (drop). Each row's `policy_version` is its oldest token's version.

Exactly once: a checkpoint holds the buffer and the prompts of the calls still in flight (their samples are
not waited for; a resume generates those prompts again, first). The prompt stream is positioned after every
prompt launched, so no prompt is lost or trained twice.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from orchestrator.tracking import phase_timer
from workers.batch import Batch
from workers.rollout.layout import concat_rollouts
from workers.runtime import PendingCall

if TYPE_CHECKING:
    from orchestrator.trainer.loop import RLTrainer

BUFFER_FILE = "async_buffer.pt"


def split_groups(batch: Batch) -> list[Batch]:
    """One Batch per prompt uid (its rollout.n samples), in order of first appearance."""
    uids = batch.non_tensors["uid"]
    return [batch.index([i for i, u in enumerate(uids) if u == uid]) for uid in dict.fromkeys(uids)]


def stamp_oldest_token(batch: Batch, launched: int) -> Batch:
    """policy_version per row = its oldest token's version (the launch version for an empty response)."""
    versions = batch["token_versions"]
    oldest = torch.where(versions >= 0, versions, torch.iinfo(versions.dtype).max).min(dim=-1).values
    batch["policy_version"] = torch.where(oldest == torch.iinfo(versions.dtype).max, launched, oldest)
    return batch


def concat_prompts(rows: list[Batch], pad_token_id: int) -> Batch:
    """Prompt rows of different launches (left-padded to different widths) as one left-padded Batch."""
    width = max(r["input_ids"].shape[1] for r in rows)
    out = []
    for r in rows:
        extra = width - r["input_ids"].shape[1]
        row = r.select()
        row["input_ids"] = torch.nn.functional.pad(r["input_ids"], (extra, 0), value=pad_token_id)
        row["attention_mask"] = torch.nn.functional.pad(r["attention_mask"], (extra, 0), value=0)
        out.append(row)
    return Batch.concat(out)


class AsyncSchedule:
    def __init__(self) -> None:
        self.inflight: deque[tuple[PendingCall, Batch, int]] = deque()  # (generate call, its prompts, version)
        self.groups: deque[Batch] = deque()  # scored, not yet trained, oldest first
        self.redo: deque[Batch] = deque()  # single prompts to generate again (stale, or in flight at a checkpoint)
        self.prompt_rows: dict[str, Batch] = {}  # uid -> its prompt row, until the prompt is trained
        self.launches = 0

    # --- producer -------------------------------------------------------------------------

    def _needed(self, trainer: "RLTrainer", picked: int) -> int:
        """Groups still to train this run, beyond those buffered, in flight or picked for this step."""
        want = trainer.cfg.data.train_batch_size
        total = (trainer.cfg.trainer.total_steps - trainer.step + 1) * want
        return total - picked - len(self.groups) - self._in_flight()

    def _in_flight(self) -> int:
        """Prompts launched whose samples have not come back."""
        return sum(len(prompts) for _, prompts, _ in self.inflight)

    def _launch(self, trainer: "RLTrainer", picked: int) -> None:
        want = trainer.cfg.data.train_batch_size
        while len(self.inflight) < trainer.cfg.rollout.async_calls and self._needed(trainer, picked) > 0:
            if self.redo:
                prompts = concat_prompts([self.redo.popleft() for _ in range(min(want, len(self.redo)))],
                                         trainer.tok.pad_token_id)
                params = trainer.rollout_params(self.launches, 0)
            else:
                prompts, params = trainer.draw_prompts(self.launches, 1)
                self.prompt_rows.update(zip(prompts.non_tensors["uid"], split_rows(prompts)))
            self.launches += 1
            self.inflight.append((trainer.rollout.call_async("generate", prompts, params), prompts,
                                  trainer.policy_version))

    def _collect(self, trainer: "RLTrainer", *, block: bool) -> None:
        """Move finished calls (the oldest, waiting for it when `block`) into the buffer."""
        while self.inflight and (block or self.inflight[0][0].done()):
            call, prompts, version = self.inflight.popleft()
            out = stamp_oldest_token(trainer.finish_rollout(prompts, call.result(), version), version)
            self.groups.extend(split_groups(out))
            block = False

    # --- the schedule interface ---------------------------------------------------------------

    def take(self, trainer: "RLTrainer", m: dict[str, float]) -> Batch:
        want, bound = trainer.cfg.data.train_batch_size, trainer.cfg.rollout.max_staleness
        picked: list[Batch] = []
        stale = 0
        self._collect(trainer, block=False)
        self._launch(trainer, 0)
        while len(picked) < want:
            if not self.groups:
                with phase_timer("wait_rollout", m):  # the part of generation training did not hide
                    self._collect(trainer, block=True)
                self._launch(trainer, len(picked))
                continue
            group = self.groups.popleft()
            if trainer.policy_version - int(group["policy_version"].min()) > bound:
                stale += 1
                uid = group.non_tensors["uid"][0]
                if trainer.cfg.rollout.on_stale == "regenerate":
                    self.redo.append(self.prompt_rows[uid])
                    self._launch(trainer, len(picked))
                else:
                    del self.prompt_rows[uid]
                continue
            picked.append(group)
            del self.prompt_rows[group.non_tensors["uid"][0]]
        self._launch(trainer, want)
        batch = concat_rollouts(picked, trainer.tok.pad_token_id)
        trainer.rollout_metrics(batch, m)
        tokens = batch["token_versions"][batch["response_mask"].bool()]
        m.update({"async/stale_groups": float(stale), "async/buffered_groups": float(len(self.groups)),
                  "async/prompts_in_flight": float(self._in_flight()), "async/overlapped": 1.0,
                  "async/token_staleness_mean": float((trainer.policy_version - tokens).float().mean())
                  if tokens.numel() else 0.0,
                  "async/mixed_version_rows": float(sum(int(v[valid].unique().numel() > 1) for v, valid in
                                                        zip(batch["token_versions"], batch["response_mask"].bool())))})
        return batch

    def before_sync(self, trainer: "RLTrainer", m: dict[str, float]) -> None:
        """Nothing to wait for: the weights go out while the rollout pool generates."""
        self._collect(trainer, block=False)

    def save(self, directory: Path) -> None:
        self._save(directory, [row for _, prompts, _ in self.inflight for row in split_rows(prompts)])

    def _save(self, directory: Path, pending: list[Batch]) -> None:
        """The buffer, plus `pending` prompt rows (launched, not back) to be generated again first on resume."""
        torch.save({"groups": list(self.groups), "redo": list(self.redo) + pending, "launches": self.launches,
                    "prompt_rows": self.prompt_rows}, directory / BUFFER_FILE)

    def load(self, directory: Path) -> None:
        path = directory / BUFFER_FILE
        self.inflight.clear()
        if path.is_file():
            state = torch.load(path, weights_only=False)
            self.groups, self.redo, self.launches = deque(state["groups"]), deque(state["redo"]), state["launches"]
            self.prompt_rows = state["prompt_rows"]


def split_rows(prompts: Batch) -> list[Batch]:
    return [prompts.index([i]) for i in range(len(prompts))]

