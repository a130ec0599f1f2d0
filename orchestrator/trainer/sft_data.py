"""Prompt + worked solution + EOS as the engine's prompt/response layout, for the SFT warm start."""
from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from orchestrator.trainer.data import prompts_to_batch
from workers.batch import Batch


def sft_batch(rows: list[dict[str, Any]], solution_key: str, tokenizer: PreTrainedTokenizerBase) -> Batch:
    prompts = prompts_to_batch(rows, tokenizer, uid_prefix="sft")
    targets = [tokenizer(str(r[solution_key]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for r in rows]
    width = max(len(t) for t in targets)
    responses = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, t in enumerate(targets):
        responses[i, :len(t)] = torch.tensor(t)
        response_mask[i, :len(t)] = 1
    return with_responses(prompts, responses, response_mask)


def with_responses(prompts: Batch, responses: torch.Tensor, response_mask: torch.Tensor) -> Batch:
    """The concatenated layout every engine consumes: [left-padded prompt | right-padded response]."""
    input_ids = torch.cat([prompts["input_ids"], responses], dim=1)
    attention_mask = torch.cat([prompts["attention_mask"], response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch.from_dict(
        {"prompts": prompts["input_ids"], "responses": responses, "response_mask": response_mask,
         "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids},
        non_tensors=dict(prompts.non_tensors))
