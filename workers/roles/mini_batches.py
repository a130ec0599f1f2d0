"""PPO-style passes over a rank's rows: `epochs` shuffled passes, each cut into `num_mini` mini-batches.

Shared by the actor and the critic so both step their optimizers on the same schedule. Rows carrying
a prompt `uid` are shuffled prompt by prompt, so a mini-batch holds whole prompts (ppo_mini_batch_size
counts prompts) and its forwards compute each prompt once (workers/engines/prompt_sharing.py); with one
row per uid this is the plain row shuffle.
"""
from __future__ import annotations

from typing import Iterator

import torch

from workers.batch import Batch
from workers.runtime.balance import rows_by_key


def mini_batches(batch: Batch, *, num_mini: int, epochs: int, shuffle: bool,
                 generator: torch.Generator) -> Iterator[Batch]:
    rows = len(batch) // num_mini
    for _ in range(epochs):
        order = _shuffled(batch, generator) if shuffle else torch.arange(len(batch))
        shuffled = batch.index(order)
        for i in range(num_mini):
            yield shuffled.slice(i * rows, (i + 1) * rows)


def _shuffled(batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """A random row order that keeps each uid's rows together (in their order), when the batch has uids."""
    if "uid" not in batch.non_tensors:
        return torch.randperm(len(batch), generator=generator)
    groups = rows_by_key(list(batch.non_tensors["uid"]))
    return torch.tensor([row for g in torch.randperm(len(groups), generator=generator).tolist() for row in groups[g]],
                        dtype=torch.long)


def mean_history(history: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in history.items()}
