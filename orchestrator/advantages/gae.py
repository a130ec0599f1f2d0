"""Generalised Advantage Estimation for PPO with a critic (Schulman et al. 2016, eq. 16)."""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage
from workers.losses.masked import masked_whiten


@register_advantage("gae", needs_critic=True, needs_baseline_rollout=False, uses_groups=False,
                    params={"gamma": "gamma", "lam": "lam", "whiten_advantages": "whiten_advantages", "eps": "eps"})
def gae(
    data: AdvantageInputs, *, gamma: float, lam: float, whiten_advantages: bool, eps: float
) -> tuple[Tensor, Tensor]:
    """A_t = sum_l (gamma*lam)^l delta_{t+l}, delta_t = r_t + gamma*V_{t+1} - V_t; returns = A + V.

    Masked positions are not time steps: the recursion skips them (V and A carry through),
    so right padding ends the episode (V after the last token = 0) and masked interior tokens
    (e.g. tool output) are transparent. Returns use the raw A; whiten_advantages=True then normalises A
    over all valid tokens of the batch with eps in the denominator. Output is 0 off the mask.
    """
    if data.values is None:
        raise ValueError("gae needs critic values (data.values), got None")
    rewards = data.token_level_rewards.to(torch.float32)
    values = data.values.to(torch.float32)
    valid = data.response_mask.bool()
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    adv = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = torch.where(valid[:, t], delta + gamma * lam * next_adv, next_adv)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        adv[:, t] = next_adv
    zero = torch.zeros((), dtype=adv.dtype, device=adv.device)
    returns = torch.where(valid, adv + values, zero)
    adv = masked_whiten(adv, valid, eps=eps) if whiten_advantages else torch.where(valid, adv, zero)
    return adv, returns
