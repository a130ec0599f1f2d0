"""Sequence scores for a generated batch: rule rewards on decoded text, optional reward model, shaping."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from orchestrator.rewards.registry import score_batch
from workers.batch import Batch


def decode_responses(batch: Batch, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Response text up to and including EOS (the reward functions cut at EOS themselves)."""
    out = []
    for ids, mask in zip(batch["responses"].tolist(), batch["response_mask"].tolist()):
        out.append(tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False))
    return out


def rule_scores(batch: Batch, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    texts = decode_responses(batch, tokenizer)
    scores = score_batch(cfg.reward.rule_fn, texts, list(batch.non_tensors["ground_truth"]),
                         eos_token=tokenizer.eos_token, **dict(cfg.reward.rule_kwargs))
    return torch.as_tensor(np.asarray(scores, dtype=np.float32))


def overlong_penalty(response_lengths: torch.Tensor, max_new_tokens: int, buffer_len: int,
                     penalty_factor: float) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 until max-buffer, then linear down to -penalty_factor at max."""
    start = max_new_tokens - buffer_len
    over = (response_lengths.float() - start).clamp(min=0)
    return -penalty_factor * over / max(buffer_len, 1)


def accuracy_scores(batch: Batch, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """0/1 correctness by `reward.accuracy_fn`, whatever the training reward (what the summary reports)."""
    texts = decode_responses(batch, tokenizer)
    return torch.as_tensor(score_batch(cfg.reward.accuracy_fn, texts, list(batch.non_tensors["ground_truth"]),
                                       eos_token=tokenizer.eos_token), dtype=torch.float32)
