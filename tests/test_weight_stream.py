"""Bucketed full-weight streaming from FSDP2 shards, in HF naming, with real gloo collectives."""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid_engine.names import hf_name, param_group, tied_aliases
from hybrid_engine.weight_stream import WeightStream, plan_buckets

from fsdp_harness import finish_rank, fsdp2 as _fsdp2, init_gloo as _init, shutdown_gloo, tiny_qwen2 as _tiny_qwen2


# -- the distributed check ---------------------------------------------------------------------

SMALL_BUCKET = 1024  # bytes: smaller than every weight matrix (embeddings are 50*64*4 = 12800)


def _drain(stream: WeightStream, limit: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    names: list[str] = []
    values: dict[str, torch.Tensor] = {}
    for bucket in stream:
        nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
        assert nbytes <= limit or len(bucket) == 1, f"bucket of {nbytes} bytes over {limit}: {[n for n, _ in bucket]}"
        names += [name for name, _ in bucket]
        values.update(bucket)
    return names, values


def _stream_worker(rank: int, world: int, init_file: str) -> None:
    _init(rank, world, init_file)
    try:
        reference = {k: v.clone() for k, v in _tiny_qwen2(tie=True, seed=0).state_dict().items()}
        model = _fsdp2(_tiny_qwen2(tie=True, seed=0))
        assert all(p.to_local().numel() < p.numel() for p in model.parameters()), "params must be sharded"

        # Tied embeddings: one tensor, emitted once under the name save_pretrained keeps.
        assert tied_aliases(model) == {"lm_head.weight": "model.embed_tokens.weight"}
        expected = set(reference) - set(tied_aliases(model))

        consumer = rank == 0
        stream = WeightStream(model, bucket_bytes=SMALL_BUCKET, dtype=torch.float32, consumer=consumer)
        names, values = _drain(stream, SMALL_BUCKET)
        stats = stream.stats
        total = sum(reference[n].numel() * 4 for n in expected)
        assert (stats.tensors, stats.bytes_streamed) == (len(expected), total)
        assert stats.buckets < stats.tensors  # small tensors (biases, norms) did share buckets
        assert stats.seconds >= stats.gather_seconds > 0
        if consumer:
            assert len(names) == len(set(names)) and set(names) == expected
            for name in expected:
                assert torch.equal(values[name], reference[name]), name
        else:
            assert names == []  # joined every gather, kept nothing

        # Cast to bf16 on the shard before the gather; every rank a consumer; a bigger bucket.
        stream = WeightStream(model, bucket_bytes=16384, dtype=torch.bfloat16, consumer=True)
        names, values = _drain(stream, 16384)
        assert set(names) == expected and stream.stats.bytes_streamed == total // 2
        assert all(torch.equal(values[n], reference[n].to(torch.bfloat16)) for n in expected)

        # A yielded list is emptied when the next bucket is requested (bounds memory to one bucket).
        it = iter(WeightStream(model, bucket_bytes=SMALL_BUCKET, dtype=torch.float32, consumer=True))
        first = next(it)
        assert first and first[0][0] == "model.embed_tokens.weight"
        next(it)
        assert first == []
        for _ in it:  # every rank must finish the stream: the gathers are collectives
            pass
    finally:
        shutdown_gloo()
    finish_rank()  # only reached when every check passed


@pytest.mark.timeout(180)
def test_fsdp2_stream_two_ranks_small_buckets(tmp_path) -> None:
    mp.spawn(_stream_worker, args=(2, str(tmp_path / "pg_init")), nprocs=2, join=True)


# -- single-process checks -----------------------------------------------------------------------


def test_plan_buckets_groups_in_order_and_isolates_oversized() -> None:
    assert plan_buckets([4, 4, 4, 20, 1, 1, 8], 10) == [[0, 1], [2], [3], [4, 5, 6]]
    assert plan_buckets([], 10) == []
    assert plan_buckets([10, 10], 10) == [[0], [1]]
    with pytest.raises(ValueError):
        plan_buckets([1], 0)


def test_names_strip_wrappers_and_group() -> None:
    assert hf_name("_orig_mod.model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.mlp.w") == (
        "model.layers.0.mlp.w"
    )
    assert param_group("model.layers.11.self_attn.q_proj.weight") == "model.layers.11"
    assert param_group("model.embed_tokens.weight") == "embeddings"
    assert param_group("lm_head.weight") == "head"
    assert param_group("model.norm.weight") == "head"
    assert param_group("value_head.bias") == "other"


def test_plain_module_stream_strips_wrappers_and_never_aliases_live_weights() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    inner = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    inner[0] = checkpoint_wrapper(inner[0])
    wrapped = torch.nn.Module()
    wrapped._orig_mod = inner  # the attribute torch.compile's OptimizedModule wraps with
    raw = [n for n, _ in wrapped.named_parameters()]
    assert raw[0] == "_orig_mod.0._checkpoint_wrapped_module.weight"
    stream = WeightStream(wrapped, bucket_bytes=1 << 20, dtype=torch.float32, consumer=True)
    buckets = [list(b) for b in stream]
    assert len(buckets) == 1
    assert [n for n, _ in buckets[0]] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    for (_, got), live in zip(buckets[0], inner.parameters()):
        assert torch.equal(got, live) and got.untyped_storage().data_ptr() != live.untyped_storage().data_ptr()
        assert not got.requires_grad
