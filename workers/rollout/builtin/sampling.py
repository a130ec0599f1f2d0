"""Pick the next token per row and its log-prob, deterministically from one torch.Generator.

The reported log-prob is under the *unfiltered* softmax(logits / T) in float32 (T = 1
when greedy), because that is exactly what the training forward recomputes; top-k /
top-p only shape the distribution that is sampled from. Sampling uses the
exponential-race trick (argmax p / E, E ~ Exp(1)), which is exact, needs no
cumulative-sum search and keeps its random draws tied to the generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplerConfig:
    """The sampling-relevant subset of SamplingParams, normalised once per generate call."""

    temperature: float  # 0 means greedy
    top_k: int  # <= 0 or >= vocab disables
    top_p: float  # >= 1 disables

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest prefix of tokens (by prob) whose mass reaches top_p; the top token always survives."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before > top_p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor, cfg: SamplerConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] (any dtype) -> (tokens [n] int64, log-probs [n] float32 of those tokens)."""
    logits = logits.float()
    if cfg.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
    else:
        scaled = logits / cfg.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        filtered = scaled
        vocab = logits.shape[-1]
        if 0 < cfg.top_k < vocab:
            filtered = _top_k_filter(filtered, cfg.top_k)
        if cfg.top_p < 1.0:
            filtered = _top_p_filter(filtered, cfg.top_p)
        probs = logp.exp() if filtered is scaled else filtered.softmax(-1)
        race = torch.empty_like(probs).exponential_(generator=generator)
        tokens = (probs / race).argmax(dim=-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
