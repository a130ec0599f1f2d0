"""The output layout every rollout engine returns (see base.RolloutEngine), built in one place."""
from __future__ import annotations

import torch

from workers.batch import Batch


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


PROMPT_SIDE = ("prompts",)
JOINED = ("input_ids", "attention_mask")


def concat_rollouts(batches: list[Batch], pad_token_id: int) -> Batch:
    """Row-wise concat of rollout outputs whose prompt / response widths differ (e.g. DAPO refill rounds).

    Prompt-side columns are left-padded and response-side [B, R] columns right-padded to the widest
    round, so every row keeps the [left-padded prompt | right-padded response] layout.
    """
    width_p = max(b["prompts"].shape[1] for b in batches)
    width_r = max(b["responses"].shape[1] for b in batches)
    padded = []
    for b in batches:
        p, r = b["prompts"].shape[1], b["responses"].shape[1]
        out = b.select()
        for key in b.tensors.keys():
            t = b[key]
            fill = pad_token_id if key in ("prompts", "responses", "input_ids") else 0
            if key in PROMPT_SIDE:
                out[key] = _pad(t, left=width_p - p, right=0, fill=fill)
            elif key in JOINED:
                out[key] = torch.cat([_pad(t[:, :p], left=width_p - p, right=0, fill=fill),
                                      _pad(t[:, p:], left=0, right=width_r - r, fill=fill)], dim=1)
            elif key != "position_ids" and t.dim() >= 2 and t.shape[1] == r:
                out[key] = _pad(t, left=0, right=width_r - r, fill=fill)
        out["position_ids"] = (out["attention_mask"].long().cumsum(dim=1) - 1).clamp(min=0)
        padded.append(out)
    return Batch.concat(padded)


def _pad(t: torch.Tensor, *, left: int, right: int, fill: int) -> torch.Tensor:
    if left == right == 0:
        return t
    shape = list(t.shape)
    parts = []
    if left:
        parts.append(torch.full([shape[0], left, *shape[2:]], fill, dtype=t.dtype))
    parts.append(t)
    if right:
        parts.append(torch.full([shape[0], right, *shape[2:]], fill, dtype=t.dtype))
    return torch.cat(parts, dim=1)
