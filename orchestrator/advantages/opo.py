"""OPO: exact on-policy training with the length-weighted (optimal) group reward baseline.

Hao et al. 2025, "On-Policy RL with Optimal reward baseline" (arXiv 2505.23585).
"""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.advantages.grouping import group_ids
from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage


@register_advantage("opo", needs_critic=False, needs_baseline_rollout=False, uses_groups=True, params={},
                    on_policy_only=True)
def opo(data: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """OPO advantage: A_i = r_i - b_g with b_g = sum_{j in g} |o_j| r_j / sum_{j in g} |o_j|.

    The variance-minimising constant baseline of the REINFORCE gradient (r - b) grad log pi(o) is
    b* = E[|grad log pi(o)|^2 r] / E[|grad log pi(o)|^2]; the paper approximates the squared norm of
    a response's gradient as proportional to its length |o| (token gradients roughly orthogonal),
    which gives the length-weighted group mean above. |o_i| is the number of valid tokens of row i
    (response_mask). There is no division by the group std (the paper drops it: the objective is
    the plain expected reward). A group of one and a group with equal rewards get A = 0; a group
    whose responses are all empty has no tokens, so its advantage is never used (0 here).

    The derivation assumes the samples come from the policy being updated, hence on_policy_only:
    validation requires one optimizer step per batch (actor.ppo_epochs=1 and
    actor.ppo_mini_batch_size=data.train_batch_size). With that the PPO ratio is 1 on the single
    step, so the clipped loss reduces to the plain policy gradient. Loss aggregation token-mean
    (configs/algorithm/opo.yaml): it weights every token alike, so a response's gradient is the sum
    of its token gradients (up to one constant per batch), the premise of the length weighting;
    a per-sequence token mean (seq-mean-token-mean) would rescale each response by 1/|o_i| and
    break it.
    """
    scores = data.sequence_scores().to(torch.float32)
    ids = group_ids(data.index, scores.device)
    lengths = data.response_mask.to(torch.float32).sum(dim=-1)
    n_groups = int(ids.max().item()) + 1 if ids.numel() else 0
    weighted = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(0, ids, lengths * scores)
    tokens = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(0, ids, lengths)
    baseline = (weighted / tokens.clamp(min=1.0))[ids]
    adv = torch.where(tokens[ids] > 0, scores - baseline, torch.zeros_like(scores))
    return data.on_tokens(adv)
