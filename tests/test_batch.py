"""Tests for the Batch protocol: the row algebra the driver and dispatch modes rely on."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.batch import Batch

FAST = settings(max_examples=50, deadline=None)


def make_batch(size: int, seed: int = 0) -> Batch:
    """Mixed fields: 2-D int tensor, 1-D float tensor, strings, and ragged lists per row."""
    gen = torch.Generator().manual_seed(seed)
    return Batch.from_dict(
        tensors={
            "input_ids": torch.randint(0, 100, (size, 3), generator=gen),
            "reward": torch.rand(size, generator=gen),
        },
        non_tensors={
            "uid": [f"u{seed}-{i}" for i in range(size)],
            "ground_truth": [list(range(i % 3)) for i in range(size)],
        },
        meta={"step": seed},
    )


def assert_same(a: Batch, b: Batch) -> None:
    assert a.keys() == b.keys()
    assert len(a) == len(b)
    for key in a.tensors.keys():
        assert torch.equal(a[key], b[key]), key
    for key in a.non_tensors:
        assert list(a[key]) == list(b[key]), key
    assert a.meta == b.meta


# --- properties --------------------------------------------------------------


@FAST
@given(per_chunk=st.integers(0, 6), n=st.integers(1, 6), seed=st.integers(0, 1000))
def test_chunk_then_concat_is_identity(per_chunk: int, n: int, seed: int) -> None:
    batch = make_batch(per_chunk * n, seed)
    chunks = batch.chunk(n)
    assert [len(c) for c in chunks] == [per_chunk] * n
    assert_same(Batch.concat(chunks), batch)


@FAST
@given(size=st.integers(0, 20), micro=st.integers(1, 7), seed=st.integers(0, 1000))
def test_split_by_size_then_concat_is_identity(size: int, micro: int, seed: int) -> None:
    batch = make_batch(size, seed)
    parts = batch.split_by_size(micro)
    assert all(len(p) == micro for p in parts[:-1])
    assert sum(len(p) for p in parts) == size
    if size:
        assert 1 <= len(parts[-1]) <= micro
        assert_same(Batch.concat(parts), batch)
    else:
        assert parts == []


@FAST
@given(size=st.integers(1, 20), divisor=st.integers(1, 25), seed=st.integers(0, 1000))
def test_pad_then_unpad_is_identity(size: int, divisor: int, seed: int) -> None:
    batch = make_batch(size, seed)
    padded, pad_size = batch.pad_to_divisor(divisor)
    assert len(padded) % divisor == 0
    assert 0 <= pad_size < divisor
    assert len(padded) == size + pad_size
    wrap = [i % size for i in range(pad_size)]  # padding repeats rows from the start, wrapping
    assert torch.equal(padded["input_ids"][size:], batch["input_ids"][wrap])
    assert list(padded["uid"][size:]) == [batch["uid"][i] for i in wrap]
    assert_same(padded.unpad(pad_size), batch)
    # The data-parallel dispatch path: pad, split per rank, gather, unpad.
    assert_same(Batch.concat(padded.chunk(divisor)).unpad(pad_size), batch)


# --- construction and access ------------------------------------------------


def test_from_dict_names_the_key_with_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"'mask' has length 3, expected 4 .*'ids'"):
        Batch.from_dict({"ids": torch.zeros(4, 2), "mask": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"'uid' has length 5, expected 4"):
        Batch.from_dict({"ids": torch.zeros(4)}, {"uid": list("abcde")})


def test_from_dict_rejects_scalars_strings_and_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="'loss' is a scalar"):
        Batch.from_dict({"loss": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="'text'"):
        Batch.from_dict(non_tensors={"text": "abc"})
    with pytest.raises(ValueError, match="'x'"):
        Batch.from_dict({"x": torch.zeros(2)}, {"x": [1, 2]})


def test_access_keys_contains_and_setitem() -> None:
    batch = make_batch(4)
    assert batch.keys() == ["input_ids", "reward", "uid", "ground_truth"]
    assert "uid" in batch and "reward" in batch and "step" not in batch
    assert isinstance(batch["input_ids"], torch.Tensor)
    gt = batch["ground_truth"]
    assert gt.dtype == object and gt.shape == (4,)  # ragged lists stay one object per row
    batch["adv"] = torch.ones(4)
    batch["text"] = ["a", "b", "c", "d"]
    assert torch.equal(batch["adv"], torch.ones(4)) and batch["text"].dtype == object
    batch["reward"] = [0, 1, 2, 3]  # switching kind moves the key
    assert "reward" in batch.non_tensors and "reward" not in batch.tensors.keys()
    batch["uid"] = torch.arange(4)
    assert "uid" in batch.tensors.keys() and "uid" not in batch.non_tensors
    with pytest.raises(ValueError, match=r"'adv' has length 3, expected 4"):
        batch["adv"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"'text' has length 2, expected 4"):
        batch["text"] = ["a", "b"]
    with pytest.raises(KeyError, match="'missing'"):
        batch["missing"]


def test_equal_length_2d_lists_stay_one_object_per_row() -> None:
    batch = Batch.from_dict(non_tensors={"pairs": [[1, 2], [3, 4]]})
    assert batch["pairs"].shape == (2,) and batch["pairs"][1] == [3, 4]


# --- select / pop / union ---------------------------------------------------


def test_select_keeps_named_fields_and_names_missing_keys() -> None:
    batch = make_batch(3)
    picked = batch.select(tensor_keys=["reward"], non_tensor_keys=[], meta_keys=["step"])
    assert picked.keys() == ["reward"] and picked.meta == {"step": 0}
    assert batch.keys() == ["input_ids", "reward", "uid", "ground_truth"]  # source untouched
    assert batch.select().keys() == batch.keys()
    with pytest.raises(KeyError, match="'nope'"):
        batch.select(tensor_keys=["nope"])
    with pytest.raises(KeyError, match="'uid'"):
        batch.select(tensor_keys=["uid"])  # uid is a non-tensor field
    with pytest.raises(KeyError, match="'lr'"):
        batch.select(meta_keys=["lr"])


def test_pop_removes_from_self_and_returns_popped() -> None:
    batch = make_batch(3)
    ids = batch["input_ids"]
    popped = batch.pop(tensor_keys=["input_ids"], non_tensor_keys=["uid"], meta_keys=["step"])
    assert popped.keys() == ["input_ids", "uid"] and popped.meta == {"step": 0}
    assert torch.equal(popped["input_ids"], ids)
    assert batch.keys() == ["reward", "ground_truth"] and batch.meta == {}
    with pytest.raises(KeyError, match="'input_ids'"):
        batch.pop(tensor_keys=["input_ids"])


def test_union_merges_fields_and_allows_equal_shared_keys() -> None:
    batch = make_batch(3)
    extra = Batch.from_dict({"values": torch.zeros(3), "reward": batch["reward"].clone()},
                            {"uid": list(batch["uid"])}, {"step": 0, "lr": 0.1})
    merged = batch.union(extra)
    assert set(merged.keys()) == {"input_ids", "reward", "uid", "ground_truth", "values"}
    assert merged.meta == {"step": 0, "lr": 0.1}
    assert "values" not in batch  # union returns a new batch


@pytest.mark.parametrize(
    "other, key",
    [
        (Batch.from_dict({"reward": torch.ones(3)}), "reward"),
        (Batch.from_dict(non_tensors={"uid": ["x", "y", "z"]}), "uid"),
        (Batch.from_dict({"r": torch.ones(3)}, meta={"step": 99}), "step"),
        (Batch.from_dict({"uid": torch.ones(3)}), "uid"),  # same key, different kind
        (Batch.from_dict({"input_ids": torch.zeros(3, 3, dtype=torch.float32)}), "input_ids"),  # dtype differs
    ],
)
def test_union_conflict_names_the_key(other: Batch, key: str) -> None:
    batch = make_batch(3)
    batch["input_ids"] = torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=f"'{key}'"):
        batch.union(other)


def test_union_refuses_different_lengths() -> None:
    with pytest.raises(ValueError, match=r"3 vs 4"):
        make_batch(3).union(Batch.from_dict({"v": torch.zeros(4)}))


# --- row operations ----------------------------------------------------------


def test_repeat_interleaved_vs_tiled() -> None:
    batch = Batch.from_dict({"x": torch.tensor([[1, 1], [2, 2]])}, {"uid": ["a", "b"]}, {"n": 2})
    inter = batch.repeat(2, interleave=True)
    tiled = batch.repeat(2, interleave=False)
    assert inter["x"][:, 0].tolist() == [1, 1, 2, 2] and list(inter["uid"]) == ["a", "a", "b", "b"]
    assert tiled["x"][:, 0].tolist() == [1, 2, 1, 2] and list(tiled["uid"]) == ["a", "b", "a", "b"]
    assert inter.meta == {"n": 2}
    with pytest.raises(ValueError, match="times"):
        batch.repeat(0)


def test_reorder_returns_new_batch_and_requires_a_permutation() -> None:
    batch = make_batch(4)
    order = [2, 0, 3, 1]
    out = batch.reorder(torch.tensor(order))
    assert torch.equal(out["input_ids"], batch["input_ids"][order])
    assert list(out["uid"]) == [batch["uid"][i] for i in order]
    assert list(batch["uid"]) == [f"u0-{i}" for i in range(4)]  # source untouched
    assert_same(batch.reorder(order), out)  # a plain list works too
    for bad in ([0, 0, 1, 2], [0, 1, 2], [0, 1, 2, 4]):
        with pytest.raises(ValueError, match="permutation"):
            batch.reorder(bad)


def test_index_and_slice() -> None:
    batch = make_batch(5)
    picked = batch.index([4, 4, -5])
    assert list(picked["uid"]) == ["u0-4", "u0-4", "u0-0"]
    assert torch.equal(picked["reward"], batch["reward"][[4, 4, 0]])
    masked = batch.index(torch.tensor([True, False, True, False, False]))
    assert list(masked["uid"]) == ["u0-0", "u0-2"]
    assert len(batch.index([])) == 0
    sliced = batch.slice(1, 3)
    assert list(sliced["uid"]) == ["u0-1", "u0-2"] and torch.equal(sliced["reward"], batch["reward"][1:3])
    with pytest.raises(TypeError, match="integers"):
        batch.index([0.5])
    with pytest.raises(IndexError):
        batch.index([5])
    with pytest.raises(ValueError, match="length 2, expected 5"):
        batch.index(torch.tensor([True, False]))


def test_chunk_indivisible_suggests_padding() -> None:
    with pytest.raises(ValueError, match=r"5 is not divisible by 2.*pad_to_divisor\(2\)"):
        make_batch(5).chunk(2)


def test_concat_refuses_mismatched_keys_and_takes_meta_from_first() -> None:
    a, b = make_batch(2, seed=1), make_batch(3, seed=2)
    joined = Batch.concat([a, b])
    assert len(joined) == 5 and joined.meta == {"step": 1}
    b.pop(non_tensor_keys=["uid"])
    with pytest.raises(ValueError, match=r"batch 1 .*\['uid'\]"):
        Batch.concat([a, b])
    with pytest.raises(ValueError, match="at least one"):
        Batch.concat([])


def test_empty_batches() -> None:
    empty = make_batch(0)
    chunks = empty.chunk(4)
    assert [len(c) for c in chunks] == [0, 0, 0, 0]
    joined = Batch.concat(chunks + [make_batch(2)])
    assert len(joined) == 2 and joined["input_ids"].shape == (2, 3)
    padded, pad = empty.pad_to_divisor(3)
    assert (len(padded), pad) == (0, 0)
    assert len(Batch.from_dict()) == 0


def test_unpad_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="pad_size"):
        make_batch(2).unpad(3)


# --- transport ---------------------------------------------------------------


def test_pickle_round_trip_uses_plain_tensors() -> None:
    batch = make_batch(4).to("cpu")
    state = batch.__getstate__()
    assert type(state["tensors"]) is dict
    assert all(type(v) is torch.Tensor for v in state["tensors"].values())
    back = pickle.loads(pickle.dumps(batch))
    assert_same(back, batch)
    assert back.tensors.batch_size == torch.Size([4]) and str(back.tensors.device) == "cpu"
    assert back["ground_truth"].dtype == object
    empty = pickle.loads(pickle.dumps(make_batch(0)))
    assert len(empty) == 0 and empty.keys() == make_batch(0).keys()


def test_to_shares_nothing_mutable_with_source() -> None:
    batch = make_batch(2)
    moved = batch.to("cpu")
    moved.meta["extra"] = 1
    moved["new"] = ["a", "b"]
    assert "extra" not in batch.meta and "new" not in batch


def test_repr_is_compact() -> None:
    text = repr(make_batch(4))
    assert text.startswith("Batch(len=4")
    assert "input_ids: (4, 3) int64" in text and "reward: (4,) float32" in text
    assert "'uid'" in text and "'step'" in text
    assert "\n" not in text


def test_concat_merges_rollout_stats_of_every_rank():
    """Each rank reports its own shard; the concatenated batch describes the whole batch."""
    from workers.rollout.stats import RolloutStats

    shards = []
    for lengths, seconds in (([3, 5], 2.0), ([4, 4, 8], 3.0)):
        b = Batch.from_dict({"x": torch.zeros(len(lengths))})
        b.meta["rollout_stats"] = RolloutStats.build(lengths=lengths, stop_token=1, repetition=0, seconds=seconds)
        b.meta["step"] = seconds
        shards.append(b)
    merged = Batch.concat(shards).meta
    stats = merged["rollout_stats"]
    assert stats["num_sequences"] == 5 and stats["tokens_generated"] == 24 and stats["max_response_length"] == 8
    assert stats["stop_token_stops"] == 2 and stats["length_stops"] == 3
    assert stats["seconds"] == 3.0 and stats["tokens_per_s"] == 8.0  # the ranks ran at once: the slowest one's time
    assert stats["mean_response_length"] == pytest.approx(24 / 5)
    assert merged["step"] == 2.0  # plain meta values still come from the first batch
