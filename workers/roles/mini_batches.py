"""PPO-style passes over a rank's rows: `epochs` shuffled passes, each cut into `num_mini` mini-batches.

Shared by the actor and the critic so both step their optimizers on the same schedule.
"""
from __future__ import annotations

from typing import Iterator

import torch

from workers.batch import Batch


def mini_batches(batch: Batch, *, num_mini: int, epochs: int, shuffle: bool,
                 generator: torch.Generator) -> Iterator[Batch]:
    rows = len(batch) // num_mini
    for _ in range(epochs):
        order = torch.randperm(len(batch), generator=generator) if shuffle else torch.arange(len(batch))
        shuffled = batch.index(order)
        for i in range(num_mini):
            yield shuffled.slice(i * rows, (i + 1) * rows)


def mean_history(history: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in history.items()}
