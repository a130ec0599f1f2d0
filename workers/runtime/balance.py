"""Split a batch over data-parallel ranks by tokens, not rows.

Rollouts end at very different lengths; equal row counts can leave one rank with most of the
tokens while the others wait at the next collective. The split keeps equal row counts (every
rank must run the same micro-batches) but chooses which rows: largest first, each to the rank
with the fewest tokens that still has room. Each rank's rows keep their relative order, and
`restore_rows` puts the results back in the input's order, so callers never see the shuffle.

With `groups` (the rows' prompt uids) a prompt's rows go to one rank together wherever the groups fit,
so the training forwards can compute that prompt once for all of them
(workers/engines/prompt_sharing.py); a batch of distinct uids (generate's prompts) is split exactly as
without them.
"""
from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence

import torch

from workers.batch import Batch


def balanced_order(tokens: list[int], parts: int, groups: Sequence[Hashable] | None = None) -> list[int]:
    """A permutation of the rows; its `parts` consecutive equal chunks have nearly equal token sums.

    groups: a key per row; rows with one key are placed as a unit (largest unit first, on the part
    with the fewest tokens that has room for all of it); units that fit nowhere are placed row by row."""
    if len(tokens) % parts:
        raise ValueError(f"balanced_order: {len(tokens)} rows do not split into {parts} equal parts")
    if groups is not None and len(groups) != len(tokens):
        raise ValueError(f"balanced_order: {len(groups)} group keys for {len(tokens)} rows")
    size = len(tokens) // parts
    chunks: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    loose: list[int] = []
    units = rows_by_key(groups) if groups is not None else []
    if any(len(unit) > 1 for unit in units):
        for unit in sorted(units, key=lambda u: (-sum(tokens[i] for i in u), u[0])):
            room = [p for p in range(parts) if len(chunks[p]) + len(unit) <= size]
            if not room:
                loose.extend(unit)
                continue
            part = min(room, key=lambda p: (totals[p], p))
            chunks[part].extend(unit)
            totals[part] += sum(tokens[i] for i in unit)
    else:
        loose = list(range(len(tokens)))
    heap = [(totals[part], part) for part in range(parts) if len(chunks[part]) < size]  # full parts stay out
    heapq.heapify(heap)
    for row in sorted(loose, key=lambda i: (-tokens[i], i)):
        total, part = heapq.heappop(heap)
        chunks[part].append(row)
        if len(chunks[part]) < size:
            heapq.heappush(heap, (total + tokens[row], part))
    return [row for chunk in chunks for row in sorted(chunk)]


def rows_by_key(keys: Sequence[Hashable]) -> list[list[int]]:
    """Row indices per distinct key (e.g. a prompt's uid), keys in first-seen order, rows in order."""
    units: dict[Hashable, list[int]] = {}
    for row, key in enumerate(keys):
        units.setdefault(key, []).append(row)
    return list(units.values())


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
