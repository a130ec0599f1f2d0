"""Training a reward-kind FSDP2 engine (what `baton rm` does): on 2 gloo ranks the Bradley-Terry
gradients equal those of 1 rank and of plain HF autograd, the score head included.

The score head lives in the root FSDP group, whose parameters are re-gathered for backward only
from the root module's outputs; this is the check that the per-token scores the engine pools
keep that path alive.
"""
from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist

from fsdp_harness import finish_rank, shutdown_gloo
import torch.multiprocessing as mp

from test_fsdp2_engine import (CPU, _free_port, assert_close_dicts, engine_spec, capture_grads, make_batch,
                               make_tiny_qwen2, my_rows, optim_spec)
from workers.engines import LossNorm
from workers.losses.bradley_terry import bradley_terry_loss


def _hf_grads(path: str, batch) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # engine_spec's seed: the same fresh score head
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    # make_batch never uses the pad id inside a row, so HF's pooling picks the last attended token too
    scores = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits[:, 0]
    loss, _ = bradley_terry_loss({"scores": scores}, batch, LossNorm(global_tokens=0.0, global_seqs=len(batch),
                                                                      dp_size=1))
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _check(rank: int, path: str) -> None:
    from workers.engines.fsdp2 import FSDPEngine

    batch = make_batch()  # 8 rows = 4 (chosen, rejected) pairs; each rank gets 2 whole pairs
    two = FSDPEngine(engine_spec(path, "reward"), optim_spec(grad_clip=None), device=CPU)
    seen_two = capture_grads(two)
    metrics = two.train_mini_batch(my_rows(batch, rank), bradley_terry_loss, micro_batch_size=2, temperature=None,
                                   with_entropy=False)
    grads = dict(seen_two)
    solo = dist.new_group([0])
    if rank == 0:
        one = FSDPEngine(engine_spec(path, "reward"), optim_spec(grad_clip=None), device=CPU, dp_group=solo)
        seen_one = capture_grads(one)
        solo_metrics = one.train_mini_batch(batch, bradley_terry_loss, micro_batch_size=8, temperature=None,
                                            with_entropy=False)
        assert abs(metrics["loss"] - solo_metrics["loss"]) < 1e-6
        assert_close_dicts(grads, seen_one, atol=1e-6, rtol=1e-5)
        assert_close_dicts(grads, _hf_grads(path, batch), atol=1e-6, rtol=1e-5)
        assert grads["score.weight"].abs().sum() > 0
    dist.barrier()


def _entry(rank: int, path: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        _check(rank, path)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        shutdown_gloo()
    finish_rank()  # only reached when every check passed


@pytest.mark.timeout(180)
def test_reward_engine_gradients_match_one_rank_and_hf(tmp_path):
    path = str(tmp_path / "tiny-qwen2")
    make_tiny_qwen2(path)
    mp.spawn(_entry, args=(path, _free_port()), nprocs=2, join=True)
