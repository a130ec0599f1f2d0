"""Token-balanced split of a batch over data-parallel ranks (workers/runtime/balance.py)."""
from __future__ import annotations

import random

import pytest

from workers.runtime.balance import balanced_order, inverse


def _part_sums(tokens: list[int], order: list[int], parts: int) -> list[int]:
    size = len(order) // parts
    return [sum(tokens[i] for i in order[p * size:(p + 1) * size]) for p in range(parts)]


def test_sorted_lengths_split_in_order_leave_one_rank_with_most_tokens_balanced_split_does_not():
    tokens = sorted([random.Random(s).randint(8, 512) for s in range(64)], reverse=True)
    naive = _part_sums(tokens, list(range(64)), 4)
    balanced = _part_sums(tokens, balanced_order(tokens, 4), 4)
    mean = sum(tokens) / 4
    assert max(naive) > 1.3 * mean  # the problem is real for this batch
    assert max(balanced) <= 1.10 * mean and min(balanced) >= 0.90 * mean


@pytest.mark.parametrize("seed", range(5))
def test_permutation_has_equal_row_counts_and_inverse_restores_order(seed):
    rng = random.Random(seed)
    tokens = [rng.choice([3, 900]) for _ in range(24)]  # bimodal: a few very long rollouts
    order = balanced_order(tokens, 3)
    assert sorted(order) == list(range(24))
    back = inverse(order)
    assert [order[back[i]] for i in range(24)] == list(range(24))
    sums = _part_sums(tokens, order, 3)
    assert max(sums) - min(sums) <= 900  # never worse than one long row apart


def test_rows_that_do_not_divide_into_parts_are_refused():
    with pytest.raises(ValueError, match="5 rows do not split into 2"):
        balanced_order([1, 2, 3, 4, 5], 2)


def test_results_with_several_rows_per_input_row_come_back_grouped_in_input_order():
    """generate() returns n samples per prompt: each prompt's group moves as a unit, pad groups drop."""
    import torch

    from workers.batch import Batch
    from workers.runtime.balance import restore_rows

    tokens = [9, 2, 1, 8, 3, 9]  # 5 prompts + 1 pad row (a copy of row 0) for 2 ranks
    order = balanced_order(tokens, 2)
    assert order != list(range(6))
    sent = torch.tensor(order)
    returned = Batch.from_dict({"prompt": sent.repeat_interleave(2), "sample": torch.tensor([0, 1] * 6)})
    out = restore_rows(returned, [6, 6], order, pad=1, what="rollout.generate()")
    assert out["prompt"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert out["sample"].tolist() == [0, 1] * 5


def test_uneven_result_rows_after_a_reordered_split_are_an_error_not_a_silent_shuffle():
    import torch

    from workers.batch import Batch
    from workers.runtime.balance import restore_rows

    order = balanced_order([9, 8, 1, 2], 2)
    returned = Batch.from_dict({"x": torch.arange(5)})
    with pytest.raises(ValueError, match=r"actor.f\(\): returned \[3, 2\] rows per rank for 4 input rows"):
        restore_rows(returned, [3, 2], order, pad=0, what="actor.f()")


def test_a_prompts_rows_go_to_one_rank_and_the_ranks_stay_balanced():
    rng = random.Random(7)
    groups = [f"p{g}" for g in range(16) for _ in range(8)]  # 16 prompts x 8 samples, as the default job
    tokens = [rng.randint(6, 40) for _ in groups]
    order = balanced_order(tokens, 2, groups)
    assert sorted(order) == list(range(128))
    halves = [set(groups[i] for i in order[:64]), set(groups[i] for i in order[64:])]
    assert not halves[0] & halves[1]  # no prompt split across ranks
    mean = sum(tokens) / 2
    assert all(abs(s - mean) <= 0.10 * mean for s in _part_sums(tokens, order, 2))


def test_distinct_groups_split_exactly_as_rows_do_and_units_that_fit_nowhere_go_row_by_row():
    rng = random.Random(3)
    tokens = [rng.randint(1, 500) for _ in range(24)]
    assert balanced_order(tokens, 3, [f"u{i}" for i in range(24)]) == balanced_order(tokens, 3)
    groups = ["big"] * 10 + [f"u{i}" for i in range(10)]  # 10 rows of one prompt cannot fit a 5-row rank
    order = balanced_order(tokens[:20], 4, groups)
    assert sorted(order) == list(range(20)) and all(len(order[p * 5:(p + 1) * 5]) == 5 for p in range(4))
    with pytest.raises(ValueError, match="3 group keys for 4 rows"):
        balanced_order([1, 2, 3, 4], 2, ["a", "b", "c"])
