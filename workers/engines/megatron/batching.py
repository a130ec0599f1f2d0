"""From Baton's rollout layout to what Megatron's GPTModel runs on, and back.

Baton rows are [left-padded prompt | right-padded response] with HF position ids
cumsum(mask) - 1. Megatron's rotary embedding numbers positions 0..T-1 for every row, so each
row is rotated left by its padding: real tokens then sit at positions 0..n-1, exactly their HF
position ids, the padding moves to the end where a causal mask keeps it out of every real
token's attention, and no padding mask is needed. The logits that predict response token t
of row b sit at aligned position (prompt width - padding_b) + t - 1.

Padding removal (`align(..., width=)`): after the rotation every row's padding is a tail, so cutting the sequence to
the longest real row (rounded up to `seq_multiple`) drops only columns no real token attends or is
predicted from: the same logits at every real position, fewer FLOPs. This is compaction, not varlen
packing: Megatron's rotary embedding numbers positions 0..T-1 for every row, so rows cannot share a
sequence without THD packed-sequence kernels, which need CUDA and Transformer Engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workers.batch import Batch
from workers.engines.micro_batches import row_lengths


@dataclass(frozen=True)
class AlignedBatch:
    tokens: Tensor  # [B, T] left-aligned, padding at the end
    positions: Tensor  # [B, T] 0..T-1
    causal_mask: Tensor  # [1, 1, T, T] bool, True = not attended
    response_positions: Tensor  # [B, R] position whose logits predict each response token
    responses: Tensor  # [B, R]


def align(batch: Batch, *, pad_token_id: int, seq_multiple: int, width: int | None = None) -> AlignedBatch:
    """`seq_multiple`: T is padded up to a multiple of it (sequence parallel splits T over TP ranks).
    `width`: cut T to this many columns (at least the longest real row; padding removal), else the
    batch's full width. Response slots past a row's end read the last column: their mask is 0."""
    ids, mask, responses = batch["input_ids"], batch["attention_mask"], batch["responses"]
    rows, full = ids.shape
    lengths = row_lengths(mask)
    longest = int(lengths.max()) if rows else 0
    if width is not None and width < longest:
        raise ValueError(f"align: width {width} cuts real tokens (the longest row has {longest})")
    width = full if width is None else min(width, full)
    lead = (mask.cumsum(dim=1) == 0).sum(dim=1)  # left padding per row
    source = (torch.arange(width)[None, :] + lead[:, None]) % full
    tokens = ids.gather(1, source)
    tokens = torch.where(torch.arange(width)[None, :] < lengths[:, None], tokens,
                         torch.full_like(tokens, pad_token_id))
    padded = -(-width // seq_multiple) * seq_multiple
    if padded != width:
        tokens = torch.cat([tokens, tokens.new_full((rows, padded - width), pad_token_id)], dim=1)
    prompt_width = full - responses.shape[1]
    response_positions = (prompt_width - lead)[:, None] + torch.arange(responses.shape[1])[None, :] - 1
    response_positions = response_positions.clamp(max=padded - 1)
    return AlignedBatch(
        tokens=tokens, positions=torch.arange(padded)[None, :].expand(rows, padded),
        causal_mask=torch.triu(torch.ones(padded, padded, dtype=torch.bool), diagonal=1)[None, None],
        response_positions=response_positions, responses=responses)


def response_logits(logits: Tensor, aligned: AlignedBatch) -> Tensor:
    """[B, T, V] -> [B, R, V]: the logits that predict each response token."""
    index = aligned.response_positions.to(logits.device)
    return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
