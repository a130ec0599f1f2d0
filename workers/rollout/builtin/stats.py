"""Summarise one generate call as flat floats for `meta["rollout_stats"]` (logged by the driver's tracker)."""
from __future__ import annotations

from typing import Sequence

import torch

from workers.rollout.builtin.decode_loop import GroupResult


def rollout_stats(results: Sequence[GroupResult], lengths: torch.Tensor, seconds: float) -> dict[str, float]:
    """Lengths, throughput and why sequences ended (stop token, repetition early stop, length cap)."""
    stop_token = sum(r.stop_token_stops for r in results)
    repetition = sum(r.repetition_stops for r in results)
    sequences = int(lengths.numel())
    tokens = int(lengths.sum())
    return {
        "num_sequences": float(sequences),
        "tokens_generated": float(tokens),
        "mean_response_length": tokens / max(sequences, 1),
        "max_response_length": float(lengths.max()) if sequences else 0.0,
        "stop_token_stops": float(stop_token),
        "repetition_stops": float(repetition),
        "length_stops": float(sequences - stop_token - repetition),
        "decode_row_steps": float(sum(sum(r.step_rows) for r in results)),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }
