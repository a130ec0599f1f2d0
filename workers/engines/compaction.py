"""Padding removal for training-side forwards: each row's tokens moved to the front of its row.

The rollout layout is [left-padded prompt | right-padded response]. A row's attended tokens are
one contiguous run inside it, so shifting every row left by its prompt padding gives
right-padded rows whose width is the longest *real* sequence of the micro-batch instead of
prompt_width + response_width. With micro-batches built from rows of similar length
(workers/engines/micro_batches.py) almost no padding is left, with no change to the model: the
attention mask and position ids move with the tokens, so every real token sees exactly the
keys and positions it saw before (a masked key adds exp(-inf) = 0), and outputs are mapped back
to the [b, R] response layout, zero where a row has no token.

Why not packing (all rows in one sequence, block-diagonal mask or varlen attention): compaction
keeps the model's own causal attention path on every device and backend, and with length-sorted
micro-batches the padding it leaves is small (measured by `baton bench train`); varlen packing
is what to add where flash-attention exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Compacted:
    """A micro-batch's model inputs with each row shifted left by `start`.

    inputs: input_ids / attention_mask / position_ids, [b, width] with width = max(lengths).
    start: [b] first attended column of each row in the original layout.
    lengths: [b] attended tokens per row.
    prompt_width: P, the original column where responses begin.
    """

    inputs: dict[str, Tensor]
    start: Tensor
    lengths: Tensor
    prompt_width: int

    @property
    def width(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def response_columns(self, response_width: int) -> tuple[Tensor, Tensor]:
        """(column [b, R], valid [b, R]): the compact column predicting response token t, and
        whether row b has an attended token at t (columns of invalid cells are clamped, not meaningful)."""
        t = torch.arange(response_width, device=self.start.device)
        column = self.prompt_width - 1 - self.start[:, None] + t[None, :]
        end = self.start + self.lengths  # one past the last attended original column
        valid = (self.prompt_width + t[None, :]) < end[:, None]
        return column.clamp(0, self.width - 1), valid

    def last_columns(self) -> Tensor:
        """[b] compact column of each row's last attended token."""
        return (self.lengths - 1).clamp(min=0)


def attended_span(attention_mask: Tensor) -> tuple[Tensor, Tensor, bool]:
    """(start, lengths, contiguous): first attended column and count per row; whether every row's
    attended tokens form one run (the rollout layout guarantees it; anything else keeps its padding)."""
    mask = attention_mask > 0
    width = mask.shape[1]
    lengths = mask.sum(dim=1)
    start = torch.where(lengths > 0, mask.int().argmax(dim=1), torch.zeros_like(lengths))
    last = width - 1 - mask.flip(1).int().argmax(dim=1)
    contiguous = bool(((lengths == 0) | (last - start + 1 == lengths)).all())
    return start, lengths, contiguous


def compact(inputs: dict[str, Tensor], prompt_width: int) -> Compacted | None:
    """Shift each row of input_ids/attention_mask/position_ids left; None if a row is not one run."""
    start, lengths, contiguous = attended_span(inputs["attention_mask"])
    if not contiguous:
        return None
    width = max(int(lengths.max()), 1)
    offsets = torch.arange(width, device=start.device)
    column = (start[:, None] + offsets[None, :]).clamp(max=inputs["input_ids"].shape[1] - 1)
    valid = offsets[None, :] < lengths[:, None]
    moved = {
        "input_ids": torch.where(valid, inputs["input_ids"].gather(1, column), 0),
        "attention_mask": valid.to(inputs["attention_mask"].dtype),
        "position_ids": torch.where(valid, inputs["position_ids"].gather(1, column), 0),
    }
    return Compacted(inputs=moved, start=start, lengths=lengths, prompt_width=prompt_width)
