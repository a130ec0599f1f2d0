"""Pass@k group advantages in closed form, for 0/1 rewards.

Chen et al. 2025, "Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large
Reasoning Models" (arXiv 2508.10751), the analytical derivation of the pass@k advantage.
"""

from __future__ import annotations

from math import comb, sqrt

import torch
from torch import Tensor

from orchestrator.advantages.grouping import group_ids
from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage

BINARY_TOL = 1e-6  # a score within this of 0 or 1 counts as that value (float sums of 0/1 rewards are exact anyway)


def passk_group_advantages(n: int, n_neg: int, k: int) -> tuple[float, float]:
    """(A_pos, A_neg) of a group of n samples, n_neg of them incorrect, for pass@k.

    Every k-subset of the group is one pass@k "attempt", rewarded 1 if it holds a correct sample:
        Rbar  = 1 - C(n_neg, k) / C(n, k)                  mean attempt reward
        sigma = sqrt(Rbar (1 - Rbar))                      std of that 0/1 attempt reward
        A_pos = (1 - Rbar) / sigma                         every attempt holding a correct sample scores 1
        A_neg = (1 - Rbar - C(n_neg-1, k-1) / C(n-1, k-1)) / sigma
    A sample's advantage is the mean standardised reward of the attempts that contain it; for an
    incorrect one, C(n_neg-1, k-1) of its C(n-1, k-1) attempts are all incorrect. sigma = 0 (no
    correct sample, or fewer than k incorrect ones so every attempt succeeds) gives (0, 0).
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= group size, got k={k} for a group of {n}")
    mean = 1.0 - comb(n_neg, k) / comb(n, k)
    var = mean * (1.0 - mean)
    if var <= 0.0:
        return 0.0, 0.0
    sigma = sqrt(var)
    fail_with_me = comb(n_neg - 1, k - 1) / comb(n - 1, k - 1) if n_neg >= 1 else 0.0
    return (1.0 - mean) / sigma, (1.0 - mean - fail_with_me) / sigma


@register_advantage("grpo_passk", needs_critic=False, needs_baseline_rollout=False, uses_groups=True,
                    params={"k": "passk_k"})
def grpo_passk(data: AdvantageInputs, *, k: int) -> tuple[Tensor, Tensor]:
    """Pass@k advantage (Chen et al. 2025, analytical derivation), see passk_group_advantages.

    It is the GRPO advantage of the pass@k reward of k-subsets, averaged back onto the samples, so
    the policy gradient optimises pass@k for the chosen k (algorithm.passk_k) rather than pass@1:
    an incorrect sample is penalised less (not at all when fewer than k samples fail) and
    exploration is kept. With k = 1 it reduces to GRPO with the population (1/n) group std:
    A = (r - p) / sqrt(p (1 - p)), p the group's success rate. verl's `grpo_passk` is another
    convention: only the best sample of a group gets an advantage, r_max - r_second (a pass@n
    estimator with no k to choose); we use the analytic one because it targets a chosen k and
    uses every sample.

    Rewards must be 0/1: the derivation counts correct and incorrect samples. The repo's default
    task (arithmetic, reward.rule_fn=final_answer) scores exactly 0.0 or 1.0. A score that is not
    within BINARY_TOL of 0 or 1 (a shaped, weighted, KL-penalised or model reward) raises a
    ValueError naming the row rather than being thresholded: a silent cut would train on a
    different objective than the one configured. A group smaller than k raises too (validation
    already requires algorithm.passk_k <= rollout.n).
    """
    scores = data.sequence_scores().to(torch.float64)
    binary = ((scores - 0.0).abs() <= BINARY_TOL) | ((scores - 1.0).abs() <= BINARY_TOL)
    if not bool(binary.all()):
        row = int(torch.nonzero(~binary)[0, 0].item())
        raise ValueError(f"grpo_passk needs 0/1 rewards, but row {row} (uid {data.index[row]!r}) scored "
                         f"{scores[row].item():.6g}; use a 0/1 rule reward without KL-in-reward, overlong "
                         f"shaping or a reward model")
    ids = group_ids(data.index, scores.device)
    correct = scores > 0.5
    groups: dict[int, list[int]] = {}  # group id -> [size, incorrect, first row]
    for row, (g, ok) in enumerate(zip(ids.tolist(), correct.tolist())):
        entry = groups.setdefault(g, [0, 0, row])
        entry[0] += 1
        entry[1] += not ok
    table = torch.zeros(len(groups), 2, dtype=torch.float64)  # (A_pos, A_neg) per group
    for g, (n, n_neg, row) in groups.items():
        if k > n:
            raise ValueError(f"grpo_passk: k={k} exceeds the {n} samples of prompt uid {data.index[row]!r} "
                             "(algorithm.passk_k must be <= the group size)")
        table[g, 0], table[g, 1] = passk_group_advantages(n, n_neg, k)
    per_row = table.to(scores.device)[ids]
    adv = torch.where(correct, per_row[:, 0], per_row[:, 1]).to(torch.float32)
    return data.on_tokens(adv)
