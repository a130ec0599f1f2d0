"""Critic-free outcome advantages that compare samples of the same prompt: grpo, rloo.

Each response gets one scalar advantage, broadcast to its valid tokens; returns = advantages
(there is no critic to regress onto them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.advantages.grouping import group_ids, group_stats
from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage


@register_advantage("grpo", needs_critic=False, needs_baseline_rollout=False, uses_groups=True,
                    params={"norm_adv_by_std": "norm_adv_by_std", "eps": "eps"})
def grpo(data: AdvantageInputs, *, norm_adv_by_std: bool, eps: float) -> tuple[Tensor, Tensor]:
    """GRPO outcome supervision (Shao et al. 2024, Sec. 4.1.2): A_i = (r_i - mean_g) / (std_g + eps).

    norm_adv_by_std=False gives Dr.GRPO's A_i = r_i - mean_g (Liu et al. 2025), which
    removes the difficulty bias of dividing by the group std. Groups of one and groups with
    equal rewards get A = 0.
    """
    scores = data.sequence_scores().to(torch.float32)
    _, _, mean, std = group_stats(scores, group_ids(data.index, scores.device))
    adv = scores - mean
    if norm_adv_by_std:
        adv = adv / (std + eps)
    return data.on_tokens(adv)


@register_advantage("rloo", needs_critic=False, needs_baseline_rollout=False, uses_groups=True, params={})
def rloo(data: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): baseline = mean of the *other*
    samples of the prompt, A_i = r_i - (sum_g - r_i) / (n - 1). A group of one gets A = 0.
    """
    scores = data.sequence_scores().to(torch.float32)
    total, size, _, _ = group_stats(scores, group_ids(data.index, scores.device))
    baseline = (total - scores) / (size - 1).clamp(min=1.0)
    adv = (scores - baseline) * (size > 1).to(scores.dtype)
    return data.on_tokens(adv)
