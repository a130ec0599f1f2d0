"""PPO mini-batches over a rank's rows (workers/roles/mini_batches.py): whole prompts per mini-batch."""
from __future__ import annotations

import torch

from workers.batch import Batch
from workers.roles.mini_batches import mini_batches


def _rows(uids: list[str]) -> Batch:
    return Batch.from_dict({"row": torch.arange(len(uids))}, non_tensors={"uid": uids})


def test_rows_of_a_prompt_stay_in_one_mini_batch_in_their_order():
    uids = [f"p{p}" for p in range(8) for _ in range(4)]
    batch = _rows(uids)
    seen = []
    for mini in mini_batches(batch, num_mini=4, epochs=2, shuffle=True, generator=torch.Generator().manual_seed(0)):
        rows = mini["row"].tolist()
        assert len(rows) == 8 and len({uids[r] for r in rows}) == 2  # two whole prompts
        for r in range(0, 8, 4):
            assert rows[r:r + 4] == list(range(rows[r], rows[r] + 4))
        seen.append(rows)
    first_pass = sorted(r for rows in seen[:4] for r in rows)
    assert first_pass == list(range(32)) and seen[:4] != seen[4:]  # each pass covers all rows, reshuffled


def test_one_row_per_uid_is_the_plain_row_shuffle():
    batch = _rows([f"u{i}" for i in range(12)])
    plain = Batch.from_dict({"row": torch.arange(12)})
    got = [m["row"].tolist() for m in mini_batches(batch, num_mini=3, epochs=1, shuffle=True,
                                                  generator=torch.Generator().manual_seed(5))]
    want = [m["row"].tolist() for m in mini_batches(plain, num_mini=3, epochs=1, shuffle=True,
                                                   generator=torch.Generator().manual_seed(5))]
    assert got == want and got != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
