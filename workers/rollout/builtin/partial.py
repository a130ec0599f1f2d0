"""Partial rollouts: a group's generation survives weight updates that arrive mid-way (trainer.mode=async).

When `updates.poll()` takes new weights between two decode steps, the decode loop stops and its unfinished
rows go on with the new weights (rollout.partial_rollout):
- continue: each row is re-prefilled as prompt + its tokens so far under the new weights and decodes on.
  The KV cache is rebuilt rather than kept, so every later token, and its recorded log-prob, comes from
  the new weights alone; earlier tokens keep the log-probs of the weights that sampled them. Per-token
  versions record which weights sampled each token.
- restart: the row's tokens are dropped and it is sampled again from its prompt with the new weights.
Rows that had already ended keep what they have. A MiniMax-M1 repetition-stop run restarts at an update.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from workers.rollout.builtin.decode_loop import GroupResult, LoopConfig, finish, run_group
from workers.rollout.weight_updates import WeightUpdates


def run_group_with_updates(model, cache, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: LoopConfig,
                           generator: torch.Generator | None,
                           updates: WeightUpdates) -> tuple[GroupResult, torch.Tensor, int]:
    """(the group's result, token_versions [b*n, R] (-1 on padding), sequences an update interrupted)."""
    b, r, device = input_ids.shape[0], cfg.max_new_tokens, input_ids.device
    total = b * cfg.n
    tokens = torch.full((total, r), cfg.pad_token_id, dtype=torch.long, device=device)
    log_probs = torch.zeros(total, r, dtype=torch.float32, device=device)
    versions = torch.zeros(total, r, dtype=torch.long, device=device)
    prompt_of = torch.arange(b, device=device).repeat_interleave(cfg.n)  # row -> its prompt
    active = torch.arange(total, device=device)  # rows this call generates, in the call's row order
    done_tokens = 0  # tokens every active row already has
    ids, mask, call_cfg = input_ids, attention_mask, cfg
    step_rows: list[int] = []
    interrupted = 0
    while True:
        version = updates.version
        res = run_group(model, cache, ids, mask, call_cfg, generator, interrupt=updates.poll)
        step_rows += res.step_rows
        cols = slice(done_tokens, r)
        tokens[active, cols], log_probs[active, cols] = res.tokens, res.log_probs
        versions[active, cols] = version
        if res.interrupted_after is None:
            break
        active = active[res.unfinished]
        interrupted += int(active.numel())
        if updates.partial_rollout == "restart":
            tokens[active], log_probs[active] = cfg.pad_token_id, 0.0
            done_tokens = 0
        else:
            done_tokens += res.interrupted_after
        if active.numel() == 0:
            break
        prompts = prompt_of[active]
        ids = torch.cat([input_ids[prompts], tokens[active, :done_tokens]], dim=1)
        mask = torch.cat([attention_mask[prompts],
                          torch.ones(len(active), done_tokens, dtype=attention_mask.dtype, device=device)], dim=1)
        call_cfg = replace(cfg, n=1, max_new_tokens=r - done_tokens)
    result = finish(tokens, log_probs, cfg, step_rows)
    response_mask = torch.arange(r, device=device)[None, :] < result.lengths[:, None]
    return result, versions.masked_fill_(~response_mask, -1), interrupted
