"""Post-sync verification at zero extra cost: the rollout engine's log-probs of the tokens it sampled
must equal the training engine's log-probs of the same tokens. A stale or corrupted weight shows
up here first; the run stops and names the parameter group that differs most.
"""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from workers.batch import Batch


class WeightSyncMismatch(RuntimeError):
    pass


def logprob_gap(batch: Batch) -> tuple[float, float]:
    mask = batch["response_mask"].bool()
    diff = (batch["rollout_log_probs"] - batch["old_log_probs"]).abs()[mask]
    if diff.numel() == 0:
        return 0.0, 0.0
    return float(diff.max()), float(diff.mean())


def check_rollout_matches_trainer(batch: Batch, cfg: DictConfig, step: int, metrics: dict[str, float],
                                  actor) -> None:
    max_diff, mean_diff = logprob_gap(batch)
    metrics["sync/logprob_max_abs_diff"], metrics["sync/logprob_mean_abs_diff"] = max_diff, mean_diff
    every = cfg.hybrid.verify_every
    if not every or step % every or max_diff <= cfg.hybrid.verify_atol or not math.isfinite(max_diff):
        return  # a NaN/inf gap is a diverged model, not a bad sync: the divergence guard stops that run
    groups = actor.weight_group_diffs()[0]
    worst = max(groups, key=groups.get) if groups else None
    where = f"; largest weight difference in '{worst}' ({groups[worst]:.3g})" if worst else ""
    raise WeightSyncMismatch(
        f"step {step}: rollout log-probs differ from the trainer's by up to {max_diff:.3g} "
        f"(> hybrid.verify_atol={cfg.hybrid.verify_atol}){where}")
