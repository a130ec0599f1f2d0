"""Micro-batch planning: row and token budgets, length order, equal counts (workers/engines/micro_batches.py)."""
from __future__ import annotations

import pytest
import torch

from workers.engines.micro_batches import plan_rows, split_to_count


def _cost(plan: torch.Tensor, lengths: torch.Tensor) -> int:
    return len(plan) * int(lengths[plan].max())


def test_token_budget_puts_many_short_rows_or_few_long_rows_in_each_micro_batch():
    lengths = torch.tensor([3, 40, 4, 38, 2, 5, 39, 3])
    plans = plan_rows(lengths, micro_batch_size=8, max_tokens=80, sort=True)
    assert sorted(torch.cat(plans).tolist()) == list(range(8))
    assert all(_cost(p, lengths) <= 80 for p in plans)
    assert [p.tolist() for p in plans] == [[1, 6], [3, 5], [2, 0, 7, 4]]  # 40 39 | 38 5 | 4 3 3 2
    # all rows at the longest width would cost 8 x 40 = 320 tokens; length order costs 80 + 76 + 16
    assert sum(_cost(p, lengths) for p in plans) == 172


def test_a_packed_budget_counts_tokens_not_cells():
    lengths = torch.tensor([3, 40, 4, 38, 2, 5, 39, 3])
    plans = plan_rows(lengths, micro_batch_size=8, max_tokens=80, sort=True, packed=True)
    assert all(int(lengths[p].sum()) <= 80 for p in plans)
    # 40+39 | 38+5+4+3+3+2 (55): the long row takes the short ones that a cell budget (38 x 6) would refuse
    assert [p.tolist() for p in plans] == [[1, 6], [3, 5, 2, 0, 7, 4]]


def test_rows_only_keeps_consecutive_chunks_in_order():
    plans = plan_rows(torch.tensor([5, 1, 9, 2, 7]), micro_batch_size=2, max_tokens=None, sort=False)
    assert [p.tolist() for p in plans] == [[0, 1], [2, 3], [4]]


def test_a_row_longer_than_the_budget_runs_alone():
    plans = plan_rows(torch.tensor([100, 3, 3]), micro_batch_size=4, max_tokens=50, sort=True)
    assert [p.tolist() for p in plans] == [[0], [1, 2]]


def test_ranks_with_fewer_micro_batches_split_their_biggest():
    plans = [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5])]
    out = split_to_count(plans, 4)
    assert len(out) == 4 and sorted(torch.cat(out).tolist()) == list(range(6))
    with pytest.raises(RuntimeError, match="cannot make 7 micro-batches from 6 rows"):
        split_to_count(plans, 7)


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        plan_rows(torch.tensor([1]), micro_batch_size=1, max_tokens=0, sort=True)
    with pytest.raises(ValueError, match="micro_batch_size"):
        plan_rows(torch.tensor([1]), micro_batch_size=0, max_tokens=None, sort=True)
