"""Joining rollout rounds of different prompt / response widths (DAPO refills) keeps every row's layout."""
from __future__ import annotations

import torch

from workers.batch import Batch
from workers.rollout.layout import concat_rollouts, rollout_output

PAD = 0


def _round(prompts: list[list[int]], responses: list[list[int]]) -> Batch:
    width_p, width_r = max(map(len, prompts)), max(map(len, responses))
    ids = torch.tensor([[PAD] * (width_p - len(p)) + p for p in prompts])
    mask = (ids != PAD).long()
    resp = torch.tensor([r + [PAD] * (width_r - len(r)) for r in responses])
    lengths = torch.tensor([len(r) for r in responses])
    log_probs = torch.where(resp != PAD, -0.5, 0.0)
    out = rollout_output(ids, mask, resp, log_probs, lengths, n=1)
    return Batch.from_dict({**out, "scores": torch.arange(len(prompts)).float()},
                           non_tensors={"uid": [f"u{len(p)}" for p in prompts]})


def test_rounds_of_different_widths_join_with_the_layout_of_one_round():
    a = _round([[5, 6], [7, 8]], [[1, 2, 3], [4]])
    b = _round([[9, 9, 9, 9]], [[3]])
    joined = concat_rollouts([a, b], PAD)
    # the same rows generated in one round would have been padded exactly like this
    expected = _round([[5, 6], [7, 8], [9, 9, 9, 9]], [[1, 2, 3], [4], [3]])
    for key in ("prompts", "responses", "response_mask", "input_ids", "attention_mask", "position_ids",
                "rollout_log_probs"):
        assert torch.equal(joined[key], expected[key]), key
    assert torch.equal(joined["scores"], torch.tensor([0.0, 1.0, 0.0]))
    assert list(joined.non_tensors["uid"]) == ["u2", "u2", "u4"]


def test_rounds_of_equal_width_are_a_plain_concat():
    a = _round([[5, 6]], [[1, 2]])
    b = _round([[7, 8]], [[3, 4]])
    joined = concat_rollouts([a, b], PAD)
    plain = Batch.concat([a, b])
    for key in plain.tensors.keys():
        assert torch.equal(joined[key], plain[key]), key
