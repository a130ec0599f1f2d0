"""Statistics of one generate call, as flat floats the driver logs under `rollout/`; combinable across ranks.

Each data-parallel rank generates its own shard and reports its own figures; the driver
receives one Batch whose meta must describe the whole batch, not rank 0's shard. So the
stats are a dict type that `Batch.concat` knows how to merge: counts add up, maxima take
the maximum, the wall time is the slowest rank's (ranks run at once), and the means and
throughput are recomputed from the merged totals.
"""
from __future__ import annotations

from typing import Iterable

SUMMED = ("num_sequences", "tokens_generated", "stop_token_stops", "repetition_stops", "length_stops",
          "decode_row_steps", "partial_interrupted")
MAXED = ("max_response_length", "seconds", "log_probs_truncated")


class RolloutStats(dict):
    """`meta["rollout_stats"]` of a rollout Batch."""

    @classmethod
    def build(cls, *, lengths: list[int], stop_token: int, repetition: int, seconds: float,
              **extra: float) -> "RolloutStats":
        sequences, tokens = len(lengths), sum(lengths)
        stats = cls(num_sequences=float(sequences), tokens_generated=float(tokens),
                    max_response_length=float(max(lengths, default=0)), stop_token_stops=float(stop_token),
                    repetition_stops=float(repetition), length_stops=float(sequences - stop_token - repetition),
                    seconds=float(seconds), **{k: float(v) for k, v in extra.items()})
        return stats._with_derived()

    def _with_derived(self) -> "RolloutStats":
        sequences, tokens, seconds = self["num_sequences"], self["tokens_generated"], self["seconds"]
        self["mean_response_length"] = tokens / max(sequences, 1.0)
        self["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
        return self

    @classmethod
    def concat_meta(cls, parts: Iterable["RolloutStats"]) -> "RolloutStats":
        parts = list(parts)
        merged = cls()
        for key in parts[0]:
            values = [p[key] for p in parts if key in p]
            if key in SUMMED:
                merged[key] = float(sum(values))
            elif key in MAXED:
                merged[key] = float(max(values))
        return merged._with_derived()
