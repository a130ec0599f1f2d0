"""Token log-probs and entropy from [b, R, V] logits, a chunk of positions at a time.

Materialising the whole [b, R, V] in fp32 (plus a softmax for the entropy) is the largest tensor
of a training step for a real vocabulary: 16 rows x 2,048 tokens x 151,936 vocab in fp32 is
20 GB. Here each chunk of positions is cast to fp32, scored and dropped; under autograd each
chunk is checkpointed, so backward recomputes its fp32 work instead of keeping it. Every
position is computed exactly as in one piece, so the result is the same bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from workers.losses.entropy import entropy_from_logits


def _score(logits: Tensor, tokens: Tensor, temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor]:
    scaled = logits.float() / temperature
    log_probs = -F.cross_entropy(scaled, tokens, reduction="none")
    if not with_entropy:
        return log_probs, torch.zeros_like(log_probs)
    return log_probs, entropy_from_logits(scaled)


def chunked_log_probs(logits: Tensor, tokens: Tensor, *, temperature: float, with_entropy: bool,
                      chunk_positions: int) -> dict[str, Tensor]:
    """`log_probs` (and `entropy`) [b, R] in float32 of `tokens` [b, R] under softmax(logits [b, R, V] / T)."""
    rows, width, vocab = logits.shape
    flat_logits, flat_tokens = logits.reshape(rows * width, vocab), tokens.reshape(rows * width)
    grad = torch.is_grad_enabled() and logits.requires_grad
    parts: list[tuple[Tensor, Tensor]] = []
    for start in range(0, rows * width, chunk_positions):
        chunk = (flat_logits[start:start + chunk_positions], flat_tokens[start:start + chunk_positions])
        if grad:
            parts.append(checkpoint(_score, *chunk, temperature, with_entropy, use_reentrant=False))
        else:
            parts.append(_score(*chunk, temperature, with_entropy))
    out = {"log_probs": torch.cat([p[0] for p in parts]).view(rows, width)}
    if with_entropy:
        out["entropy"] = torch.cat([p[1] for p in parts]).view(rows, width)
    return out
