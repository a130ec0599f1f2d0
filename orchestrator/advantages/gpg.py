"""GPG: group-centred outcome advantages rescaled for the zero-gradient samples of the batch.

Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning"
(arXiv 2504.02546): the GPG objective and its bias-corrected group advantage.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.advantages.grouping import group_ids, group_stats
from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage


def equal_reward_groups(scores: Tensor, ids: Tensor) -> Tensor:
    """[B] bool: the row's group has one distinct score (all equal, or a group of one).

    Compared through the group's max and min, not its std, so float rounding in a mean cannot
    make three equal scores look different.
    """
    n_groups = int(ids.max().item()) + 1 if ids.numel() else 0
    empty = torch.empty(n_groups, dtype=scores.dtype, device=scores.device)
    hi = empty.scatter_reduce(0, ids, scores, "amax", include_self=False)
    lo = empty.clone().scatter_reduce(0, ids, scores, "amin", include_self=False)
    return (hi == lo)[ids]


@register_advantage("gpg", needs_critic=False, needs_baseline_rollout=False, uses_groups=True,
                    params={"norm_adv_by_std": "norm_adv_by_std", "eps": "eps"})
def gpg(data: AdvantageInputs, *, norm_adv_by_std: bool, eps: float) -> tuple[Tensor, Tensor]:
    """GPG advantage (Chu et al. 2025): A_i = alpha * (r_i - mean_g) / F_norm, alpha = B / (B - M).

    B is the number of samples in the batch and M the number of samples whose group's rewards are
    all equal (all right or all wrong under a 0/1 reward): those samples have zero advantage and
    contribute no gradient, yet the token-mean loss still divides by their tokens, which shrinks
    the gradient of the informative samples by (B - M) / B. alpha undoes that shrinkage. This is
    the paper's definition, and the one of the authors' code (AMAP-ML/GPG, `inverse_alpha =
    n_valid / n`, there counted in groups of equal size, which gives the same ratio). A group of
    one counts into M (its only sample has nothing to be compared with, so A = 0). A batch where
    every sample is in M gets A = 0 everywhere.

    Conventions:
    - F_norm: the paper allows F_norm = std_g or 1; norm_adv_by_std=True (gpg.yaml, the authors'
      default `scale_rewards`) divides by the unbiased group std + eps (as in grpo), False uses 1.
    - verl's `gpg` estimator differs: it sets alpha = B / count_nonzero(scores) (samples with a
      nonzero *reward*, not samples in groups with differing rewards), uses F_norm = 1 and gives a
      group of one its raw score. We follow the paper.

    Loss side (configs/algorithm/gpg.yaml): the paper's objective is
    -1 / sum_i |o_i| * sum_i sum_t A_i log pi(o_i,t), i.e. the `reinforce` policy loss (-A log pi,
    no ratio, no clip) with `token-mean` aggregation over the batch; no critic, no reference/KL.
    """
    scores = data.sequence_scores().to(torch.float32)
    ids = group_ids(data.index, scores.device)
    _, _, mean, std = group_stats(scores, ids)
    zero_grad = equal_reward_groups(scores, ids)
    total, useless = scores.numel(), int(zero_grad.sum().item())
    alpha = total / (total - useless) if total > useless else 0.0
    adv = alpha * (scores - mean)
    if norm_adv_by_std:
        adv = adv / (std + eps)
    adv = torch.where(zero_grad, torch.zeros_like(adv), adv)
    return data.on_tokens(adv)
