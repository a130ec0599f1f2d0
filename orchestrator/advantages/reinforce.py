"""Critic-free REINFORCE-family advantages: reinforce_plus_plus(_baseline), remax."""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.advantages.grouping import group_ids, group_stats
from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage
from workers.losses.masked import masked_whiten


def _return_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{k>=t, valid} gamma^(#valid steps from t to k) r_k; masked positions are skipped."""
    valid = mask.bool()
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
        out[:, t] = running
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


@register_advantage(
    "reinforce_plus_plus", needs_critic=False, needs_baseline_rollout=False, uses_groups=False,
    params={"gamma": "gamma", "eps": "eps"},
)
def reinforce_plus_plus(data: AdvantageInputs, *, gamma: float, eps: float) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): discounted return-to-go of the (KL-penalised) token
    rewards, whitened over all valid tokens of the batch. Returns are the raw returns-to-go.
    """
    mask = data.response_mask.to(torch.float32)
    returns = _return_to_go(data.token_level_rewards.to(torch.float32), mask, gamma)
    return masked_whiten(returns, mask, eps=eps), returns


@register_advantage(
    "reinforce_plus_plus_baseline", needs_critic=False, needs_baseline_rollout=False, uses_groups=True,
    params={"eps": "eps"},
)
def reinforce_plus_plus_baseline(data: AdvantageInputs, *, eps: float) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline (Hu 2025): subtract the prompt's group mean score (no std division,
    unlike GRPO), broadcast to tokens, then whiten over all valid tokens of the batch.
    """
    mask = data.response_mask.to(torch.float32)
    scores = data.sequence_scores().to(torch.float32)
    _, _, mean, _ = group_stats(scores, group_ids(data.index, scores.device))
    adv = masked_whiten((scores - mean).unsqueeze(-1) * mask, mask, eps=eps)
    return adv, adv


@register_advantage("remax", needs_critic=False, needs_baseline_rollout=True, uses_groups=False, params={})
def remax(data: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """ReMax (Li et al. 2023, Alg. 1): baseline = reward of the greedy response to the same
    prompt; A_t = (undiscounted reward-to-go at t) - baseline, on valid tokens.
    """
    if data.baseline_scores is None:
        raise ValueError("remax needs baseline_scores from a greedy rollout, got None")
    mask = data.response_mask.to(torch.float32)
    to_go = _return_to_go(data.token_level_rewards.to(torch.float32), mask, 1.0)
    adv = (to_go - data.baseline_scores.to(torch.float32).unsqueeze(-1)) * mask
    return adv, adv
