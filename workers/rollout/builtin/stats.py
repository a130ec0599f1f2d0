"""Summarise one generate call of the built-in engine for `meta["rollout_stats"]` (logged by the driver's tracker)."""
from __future__ import annotations

from typing import Sequence

import torch

from workers.rollout.builtin.decode_loop import GroupResult
from workers.rollout.stats import RolloutStats


def rollout_stats(results: Sequence[GroupResult], lengths: torch.Tensor, seconds: float) -> RolloutStats:
    """Lengths, throughput and why sequences ended (stop token, repetition early stop, length cap)."""
    return RolloutStats.build(
        lengths=[int(n) for n in lengths.tolist()],
        stop_token=sum(r.stop_token_stops for r in results),
        repetition=sum(r.repetition_stops for r in results),
        seconds=seconds,
        decode_row_steps=float(sum(sum(r.step_rows) for r in results)),
    )
