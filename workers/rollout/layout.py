"""The output layout every rollout engine returns (see base.RolloutEngine), built in one place."""
from __future__ import annotations

import torch


def rollout_output(prompts: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor,
                   log_probs: torch.Tensor, lengths: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Prompts [B, P] repeated n times (interleaved) joined to right-padded responses [B*n, R];
    position ids are cumsum(mask) - 1 clamped at 0 (veRL convention)."""
    prompts = prompts.cpu().repeat_interleave(n, dim=0)
    prompt_mask = prompt_mask.cpu().repeat_interleave(n, dim=0)
    response_mask = (torch.arange(responses.shape[1])[None, :] < lengths[:, None]).to(prompt_mask.dtype)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return {
        "prompts": prompts,
        "responses": responses,
        "response_mask": response_mask,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0),
        "rollout_log_probs": log_probs,
    }
