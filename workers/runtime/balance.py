"""Split a batch over data-parallel ranks by tokens, not rows.

Rollouts end at very different lengths; equal row counts can leave one rank with most of the
tokens while the others wait at the next collective. The split keeps equal row counts (every
rank must run the same micro-batches) but chooses which rows: largest first, each to the rank
with the fewest tokens that still has room. Each rank's rows keep their relative order, and
`restore_rows` puts the results back in the input's order, so callers never see the shuffle.
"""
from __future__ import annotations

import heapq

import torch

from workers.batch import Batch


def balanced_order(tokens: list[int], parts: int) -> list[int]:
    """A permutation of the rows; its `parts` consecutive equal chunks have nearly equal token sums."""
    if len(tokens) % parts:
        raise ValueError(f"balanced_order: {len(tokens)} rows do not split into {parts} equal parts")
    size = len(tokens) // parts
    heap = [(0, part) for part in range(parts)]  # (tokens so far, part); full parts leave the heap
    chunks: list[list[int]] = [[] for _ in range(parts)]
    for row in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        total, part = heapq.heappop(heap)
        chunks[part].append(row)
        if len(chunks[part]) < size:
            heapq.heappush(heap, (total + tokens[row], part))
    return [row for chunk in chunks for row in sorted(chunk)]


def inverse(order: list[int]) -> list[int]:
    out = [0] * len(order)
    for position, row in enumerate(order):
        out[row] = position
    return out


def restore_rows(merged: Batch, rank_rows: list[int], order: list[int], pad: int, what: str) -> Batch:
    """Undo the balanced split: results come back in the input's row order, pad rows dropped.

    A method may return k rows per input row (generate returns n samples per prompt, each prompt's
    samples together); the k-row groups are moved as units.
    """
    rows = len(order)
    k, rest = divmod(len(merged), rows)  # rows returned per input row
    if rest or any(n != k * rows // len(rank_rows) for n in rank_rows):
        if order == sorted(order):
            return merged.unpad(pad)
        raise ValueError(f"{what}: returned {rank_rows} rows per rank for {rows} input rows; the token-balanced "
                         "split can only restore the input order when every input row gives the same number of rows")
    position = torch.tensor(inverse(order))
    index = (position[:, None] * k + torch.arange(k)[None, :]).flatten()
    return merged.index(index).unpad(pad * k)
