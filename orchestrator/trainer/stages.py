"""Driver-side stages between worker calls: rewards into token rewards, KL shaping, advantages, sampling.

Each is a plain function of (batch, config) so the loop reads as the dataflow and tests can
call a stage on a hand-made Batch.
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from orchestrator.advantages.inputs import AdvantageInputs, scores_to_token_level
from orchestrator.advantages.registry import advantage_params, compute_advantage
from orchestrator.kl_control import KLController, apply_kl_penalty
from workers.batch import Batch


def token_level_rewards(batch: Batch, cfg: DictConfig, kl_ctrl: KLController | None) -> tuple[Batch, dict[str, float]]:
    """Scores on the last valid token, minus a per-token KL penalty when KL is in the reward."""
    scores = scores_to_token_level(batch["scores"], batch["response_mask"])
    metrics: dict[str, float] = {}
    if cfg.algorithm.use_kl_in_reward:
        rewards, kl_metrics = apply_kl_penalty(scores, batch["old_log_probs"], batch["ref_log_probs"],
                                               batch["response_mask"], kl_ctrl, cfg.algorithm.kl_penalty)
        kl_ctrl.update(kl_metrics["kl"], n_steps=len(batch))
        metrics.update({f"kl_in_reward/{k}": v for k, v in kl_metrics.items()})
        metrics["kl_in_reward/coef"] = kl_ctrl.value
    else:
        rewards = scores
    batch["token_level_rewards"] = rewards
    return batch, metrics


def advantages(batch: Batch, cfg: DictConfig) -> Batch:
    name = cfg.algorithm.adv_estimator
    data = AdvantageInputs(
        token_level_rewards=batch["token_level_rewards"],
        response_mask=batch["response_mask"],
        index=batch.non_tensors["uid"],
        values=batch["values"] if "values" in batch else None,
        baseline_scores=batch["baseline_scores"] if "baseline_scores" in batch else None,
        log_probs=batch["old_log_probs"] if "old_log_probs" in batch else None,
        teacher_log_probs=batch["teacher_log_probs"] if "teacher_log_probs" in batch else None,
    )
    adv, returns = compute_advantage(name, data, advantage_params(name, dict(cfg.algorithm)))
    batch["advantages"], batch["returns"] = adv, returns
    return batch


def teacher_metrics(batch: Batch) -> dict[str, float]:
    """How far the student is from its teacher on its own samples: mean reverse KL (k1) per response token."""
    mask = batch["response_mask"].float()
    gap = (batch["old_log_probs"] - batch["teacher_log_probs"]).float() * mask
    tokens = float(mask.sum().clamp(min=1.0))
    return {"teacher/reverse_kl": float(gap.sum()) / tokens,
            "teacher/log_prob": float((batch["teacher_log_probs"].float() * mask).sum()) / tokens}


def keep_informative_groups(batch: Batch) -> tuple[Batch, int, int]:
    """DAPO dynamic sampling: drop prompt groups whose scores all agree (zero advantage signal)."""
    uids = batch.non_tensors["uid"]
    scores = batch["scores"].numpy()
    keep_uid = {u for u in dict.fromkeys(uids) if np.std(scores[uids == u]) > 0}
    rows = [i for i, u in enumerate(uids) if u in keep_uid]
    return batch.index(rows), len(keep_uid), len(dict.fromkeys(uids))


def response_lengths(batch: Batch) -> torch.Tensor:
    return batch["response_mask"].sum(-1).float()
