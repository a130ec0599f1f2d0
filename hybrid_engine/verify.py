"""Check that a weight sync worked: both engines must score a probe batch alike.

Silent weight corruption (a dropped bucket, a wrong name map, a transposed or mis-cast
tensor) is the most common sync bug in peer systems, and it shows up only as slowly
drifting rewards. Comparing the log-probs that the trainer and the rollout engine give
the same tokens is cheap and catches it at once; when they disagree, a per-group weight
diff says where.

Everything is passed in as callables, so this knows no engines or batch types. With
`offload_params=True` the trainer cannot run a forward in ROLLOUT mode: compute its
log-probs before `rollout_mode()` (the weights do not change in between) and pass a
callable that returns them.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from hybrid_engine.names import param_group

Probe = TypeVar("Probe")


@dataclass(frozen=True)
class VerifyReport:
    """Agreement between the two engines' log-probs on one probe."""

    max_abs_diff: float  # inf when either side has NaN/inf where the other does not match
    mean_abs_diff: float
    atol: float
    numel: int
    seconds: float

    def to_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/max_abs_diff": self.max_abs_diff,
            f"{prefix}/mean_abs_diff": self.mean_abs_diff,
            f"{prefix}/seconds": self.seconds,
        }


class WeightSyncMismatch(RuntimeError):
    """The rollout engine's log-probs differ from the trainer's beyond tolerance after a sync."""

    def __init__(self, report: VerifyReport, group_diffs: Mapping[str, float] | None) -> None:
        self.report = report
        self.group_diffs = dict(group_diffs) if group_diffs else {}
        self.worst_group = max(self.group_diffs, key=self.group_diffs.__getitem__) if self.group_diffs else None
        where = (
            f"; largest weight diff in {self.worst_group!r} ({self.group_diffs[self.worst_group]:.3g})"
            if self.worst_group is not None
            else ""
        )
        super().__init__(
            f"weight sync mismatch: log-prob max abs diff {report.max_abs_diff:.3g} > atol {report.atol:.3g} "
            f"over {report.numel} values{where}"
        )


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in float32; positions where either is non-finite count as inf unless both are equal."""
    a, b = a.detach().float(), b.detach().float().to(a.device)
    diff = (a - b).abs()
    same = a == b  # equal infinities (e.g. -inf log-probs on both sides) agree
    return torch.where(same, torch.zeros_like(diff), torch.nan_to_num(diff, nan=math.inf))


def verify_sync(
    train_logprob_fn: Callable[[Probe], torch.Tensor],
    rollout_logprob_fn: Callable[[Probe], torch.Tensor],
    *,
    atol: float,
    probe: Probe,
    param_diff_fn: Callable[[], Mapping[str, float]] | None = None,
) -> VerifyReport:
    """Compare both engines' log-probs for `probe`; raise `WeightSyncMismatch` beyond `atol`.

    `param_diff_fn` (e.g. `lambda: group_param_diffs(...)`) runs only on a mismatch, to
    name the parameter group with the largest weight difference. A shape mismatch is a
    caller error (ValueError), not a weight problem.
    """
    start = time.perf_counter()
    train = train_logprob_fn(probe)
    rollout = rollout_logprob_fn(probe)
    if train.shape != rollout.shape:
        raise ValueError(f"verify_sync: log-prob shapes differ: train {tuple(train.shape)}, rollout {tuple(rollout.shape)}")
    diff = _abs_diff(train, rollout)
    numel = diff.numel()
    max_diff = float(diff.max()) if numel else 0.0
    mean_diff = float(diff.mean()) if numel else 0.0
    report = VerifyReport(max_diff, mean_diff, atol, numel, time.perf_counter() - start)
    if not max_diff <= atol:
        raise WeightSyncMismatch(report, param_diff_fn() if param_diff_fn is not None else None)
    return report


@torch.no_grad()
def group_param_diffs(
    reference: Iterable[tuple[str, torch.Tensor]],
    actual: Callable[[str], torch.Tensor],
) -> dict[str, float]:
    """Max abs difference per parameter group (`model.layers.N`, `embeddings`, `head`, `other`).

    `reference` is the trainer's full weights (e.g. a chained WeightStream); `actual(name)`
    returns the rollout's tensor for that HF name. A name it does not know (KeyError), a
    shape mismatch or a non-finite difference counts as inf.
    """
    groups: dict[str, float] = {}
    for name, ref in reference:
        try:
            got = actual(name)
        except KeyError:
            diff = math.inf
        else:
            diff = math.inf if got.shape != ref.shape else (float(_abs_diff(ref, got).max()) if ref.numel() else 0.0)
        group = param_group(name)
        groups[group] = max(groups.get(group, 0.0), diff)
    return groups
