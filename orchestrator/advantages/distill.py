"""On-policy distillation (`opd`): a frozen teacher grades every token the student sampled.

Agarwal et al. 2024 (GKD, "On-Policy Distillation of Language Models") train on the student's own samples
against a teacher; Lu & Thinking Machines 2025 ("On-Policy Distillation") turn it into RL with a dense
per-token reward, the negative reverse-KL estimate  r_t = -(log pi_student(y_t) - log pi_teacher(y_t)), and
a discount of zero: each token's advantage is its own reward, not a return-to-go, so a token is pushed
towards what the teacher would have said at that point and is not blamed for later tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.advantages.group import grpo
from orchestrator.advantages.inputs import AdvantageInputs
from orchestrator.advantages.registry import register_advantage


def reverse_kl_per_token(log_probs: Tensor, teacher_log_probs: Tensor, mask: Tensor) -> Tensor:
    """k1 estimate of KL(student || teacher) at each sampled token, 0 on padding: log pi_s - log pi_t."""
    return (log_probs - teacher_log_probs) * mask


@register_advantage("opd", needs_critic=False, needs_baseline_rollout=False, uses_groups=False, needs_teacher=True,
                    params={"distill_coef": "distill_coef", "task_reward_coef": "task_reward_coef",
                            "norm_adv_by_std": "norm_adv_by_std", "eps": "eps"})
def opd(data: AdvantageInputs, *, distill_coef: float, task_reward_coef: float, norm_adv_by_std: bool,
        eps: float) -> tuple[Tensor, Tensor]:
    """A_t = distill_coef * (log pi_teacher(y_t) - log pi_old(y_t)) + task_reward_coef * A_grpo.

    The distillation term is per token with discount 0 (Thinking Machines 2025), computed from pi_old, the
    policy that sampled the batch (its log-probs are the behaviour policy's; the PPO ratio handles later
    mini-batches). The optional task term is GRPO's group-normalised outcome advantage of the sequence score
    (Shao et al. 2024), broadcast to every token, so distillation can be mixed with the task reward; groups of
    one (rollout.n = 1) get a task advantage of 0. Returns = advantages (no critic).
    """
    if data.log_probs is None or data.teacher_log_probs is None:
        raise ValueError("opd needs log_probs (pi_old) and teacher_log_probs (the teacher role's scores)")
    mask = data.mask.to(torch.float32)
    adv = -distill_coef * reverse_kl_per_token(data.log_probs.float(), data.teacher_log_probs.float(), mask)
    if task_reward_coef:
        if data.index is None:
            raise ValueError("opd with task_reward_coef != 0 needs the prompt uids (index) to group samples")
        adv = adv + task_reward_coef * grpo(data, norm_adv_by_std=norm_adv_by_std, eps=eps)[0]
    return adv, adv
