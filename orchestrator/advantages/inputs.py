"""What every advantage estimator receives (driver side, pure tensors + uids)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workers.losses.masked import masked_sum


@dataclass(frozen=True)
class AdvantageInputs:
    """Per-batch inputs; an estimator uses the fields it needs and checks they are present.

    token_level_rewards: [B, R] rewards per response token (sequence scores sit on the last
        valid token, minus any per-token KL penalty).
    response_mask: [B, R] 1 on generated tokens (float or bool).
    index: [B] numpy object array of prompt uids; equal uids = samples of the same prompt.
        None only for estimators that do not group (gae, reinforce_plus_plus).
    values: [B, R] critic values V(s_t), or None when there is no critic.
    baseline_scores: [B] scores of a greedy rollout of each row's prompt (ReMax), or None.
    log_probs: [B, R] the sampling policy's log-probs of the response tokens (pi_old), or None.
    teacher_log_probs: [B, R] a frozen teacher's log-probs of the same tokens (on-policy distillation), or None.
    """

    token_level_rewards: Tensor
    response_mask: Tensor
    index: np.ndarray | None
    values: Tensor | None
    baseline_scores: Tensor | None
    log_probs: Tensor | None = None
    teacher_log_probs: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.token_level_rewards.shape
        if self.token_level_rewards.dim() != 2 or self.response_mask.shape != shape:
            raise ValueError(f"token_level_rewards {tuple(shape)} and response_mask "
                             f"{tuple(self.response_mask.shape)} must be the same [B, R]")
        if self.values is not None and self.values.shape != shape:
            raise ValueError(f"values {tuple(self.values.shape)} must match rewards {tuple(shape)}")
        if self.index is not None and len(self.index) != shape[0]:
            raise ValueError(f"index has {len(self.index)} uids for batch size {shape[0]}")
        for name in ("log_probs", "teacher_log_probs"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{name} {tuple(value.shape)} must match rewards {tuple(shape)}")
        if self.baseline_scores is not None and tuple(self.baseline_scores.shape) != (shape[0],):
            raise ValueError(f"baseline_scores {tuple(self.baseline_scores.shape)} must be [{shape[0]}]")

    @property
    def mask(self) -> Tensor:
        """response_mask as float in the rewards' dtype."""
        return self.response_mask.to(self.token_level_rewards.dtype)

    def on_tokens(self, adv: Tensor) -> tuple[Tensor, Tensor]:
        """A sequence-level advantage [B] on every valid token -> (advantages, returns), both [B, R]: what
        critic-free outcome estimators return (no critic to regress returns onto)."""
        tok = adv.unsqueeze(-1) * self.mask.to(adv.dtype)
        return tok, tok

    def sequence_scores(self) -> Tensor:
        """[B] total reward of each response (outcome estimators work on this)."""
        return masked_sum(self.token_level_rewards, self.response_mask, dim=-1)


def scores_to_token_level(scores: Tensor, response_mask: Tensor) -> Tensor:
    """Place sequence scores [B] on each row's last valid token -> [B, R]; empty rows get 0."""
    positions = torch.arange(response_mask.shape[-1], device=response_mask.device)
    last = torch.where(response_mask.bool(), positions, -1).max(dim=-1).values  # [B], -1 if empty
    out = torch.zeros(response_mask.shape, dtype=scores.dtype, device=scores.device)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    out[rows, last[rows]] = scores[rows]
    return out
