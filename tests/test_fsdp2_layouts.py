"""FSDP2 training-forward layouts on 2 real gloo ranks: padding removed, token budgets, varlen packing and
prompt sharing each give the padded path's outputs, losses and gradients (the harness: test_fsdp2_engine.py)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from test_fsdp2_engine import (CPU, assert_close_dicts, capture_grads, engine_spec, family_rows, gather_rows, my_rows,
                               optim_spec, rollout_rows, run_2_ranks, value_loss_fn)
from workers.batch import Batch
from workers.engines import LossNorm


def make_skewed_batch() -> Batch:
    """8 rows of very different lengths (prompt 1..12 of 12, response 1..16 of 16); rank 1's rows are all short."""
    return rollout_rows([12, 1, 7, 3, 2, 2, 1, 1], [16, 1, 16, 2, 1, 3, 2, 1], 12, 16, seed=2,
                        extra=("returns", "advantages"))


def policy_like_loss(outputs, mb, norm: LossNorm):
    """Token-mean surrogate + entropy bonus + a per-sequence mean term: every way a loss reads the cells."""
    mask = mb["response_mask"].float()
    lp, ent = outputs["log_probs"], outputs["entropy"]
    surrogate = -(mb["advantages"] * torch.exp(lp - lp.detach()) * mask).sum() / norm.global_tokens
    seq_mean = ((lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / norm.global_seqs
    return surrogate - 0.01 * (ent * mask).sum() / norm.global_tokens - seq_mean, {}


def check_padding_removal(rank: int, path: str, tmp: str) -> None:
    """Padding removed (compacted or varlen-packed) == padded (log-probs, entropy, values, scores, gradients) under
    any micro-batch plan."""
    from workers.engines.fsdp2 import FSDPEngine

    batch = make_skewed_batch()
    mine, real = my_rows(batch, rank), batch["response_mask"].bool()
    plans = {"padded": dict(remove_padding=False), "packed": {},
             "budget": dict(max_tokens_per_micro_batch=24),  # rank 0: 3 micro-batches; rank 1 plans 1, splits to 3
             "budget, gathered once": dict(max_tokens_per_micro_batch=24, gather_once=True),
             "varlen": dict(attn_implementation="varlen"),  # each micro-batch one sequence (workers/engines/varlen.py)
             "varlen, budget": dict(attn_implementation="varlen", max_tokens_per_micro_batch=24)}
    for kind, loss in (("causal_lm", policy_like_loss), ("value", value_loss_fn)):
        engines = {name: FSDPEngine(engine_spec(path, kind, **over), optim_spec(), device=CPU)
                   for name, over in plans.items()}
        seen = {name: capture_grads(e) for name, e in engines.items()}
        outs, metrics = {}, {}
        for name, e in engines.items():
            if kind == "causal_lm":
                out = e.compute_log_probs(mine, temperature=0.8, micro_batch_size=4, with_entropy=True)
            else:
                out = {"values": e.compute_values(mine, micro_batch_size=4)}
            outs[name] = {k: gather_rows(v) for k, v in out.items()}
            kw = dict(temperature=0.8, with_entropy=True) if kind == "causal_lm" else dict(temperature=None, with_entropy=False)
            metrics[name] = e.train_mini_batch(mine, loss, micro_batch_size=4, **kw)
        for name, e in engines.items():  # every pass ends with the weights sharded again (DTensor shards)
            assert all(isinstance(p, DTensor) for p in e.module.parameters()), name
        for name in (name for name in plans if name != "padded"):
            for key, value in outs[name].items():
                assert (value - outs["padded"][key])[real].abs().max() <= 1e-5, (kind, name, key)
                assert not value[~real].any(), (kind, name, key)  # no token, no value
            assert_close_dicts(seen[name], seen["padded"], atol=1e-5)
            assert abs(metrics[name]["loss"] - metrics["padded"]["loss"]) <= 1e-5
        assert metrics["padded"]["grad_norm"] > 0
    rm_scores = {name: gather_rows(FSDPEngine(engine_spec(path, "reward", **over), None, device=CPU)
                                   .compute_scores(mine, micro_batch_size=4)) for name, over in plans.items()}
    for name in plans:
        assert (rm_scores[name] - rm_scores["padded"]).abs().max() <= 1e-5, name
    dist.barrier()


def make_family_batch() -> Batch:
    """16 rows, 4 per rank-half family plus singletons: rank 0 gets families A (4 rows) and B (3) and a lone row,
    rank 1 family C (5 rows, one of them a 1-token response) and D (3)."""
    return family_rows([(5, [7, 1, 16, 3]), (12, [2, 16, 9]), (1, [4]), (3, [11, 1, 6, 14, 2]), (8, [5, 5, 12])],
                       12, 16, seed=3, extra=("advantages",))


def check_prompt_sharing(rank: int, path: str, tmp: str) -> None:
    """Rows sharing a prompt, run as one packed row per family: log-probs, entropy, loss and gradients equal the
    padded path's, with and without a budget that cuts family rows and splits micro-batches."""
    from workers.engines.fsdp2 import FSDPEngine

    batch = make_family_batch()
    mine, real = my_rows(batch, rank), batch["response_mask"].bool()
    plans = {"padded": dict(remove_padding=False), "shared": dict(share_prompts=True),
             "shared, budget": dict(share_prompts=True, max_tokens_per_micro_batch=30),
             "shared, budget, gathered once": dict(share_prompts=True, max_tokens_per_micro_batch=30, gather_once=True),
             "shared, varlen, budget": dict(share_prompts=True, max_tokens_per_micro_batch=30,
                                            attn_implementation="varlen")}
    engines = {name: FSDPEngine(engine_spec(path, "causal_lm", **over), optim_spec(), device=CPU)
               for name, over in plans.items()}
    # a 30-cell budget cuts rank 0's families A (5 + 27 cells) and B (12 + 27) into several rows and micro-batches
    assert len(engines["shared, budget"]._micro_batches(mine, 8)) > 1
    assert len(engines["shared, varlen, budget"]._micro_batches(mine, 8)) > 1
    seen = {name: capture_grads(e) for name, e in engines.items()}
    outs, metrics = {}, {}
    for name, e in engines.items():
        out = e.compute_log_probs(mine, temperature=0.8, micro_batch_size=8, with_entropy=True)
        outs[name] = {k: gather_rows(v) for k, v in out.items()}
        metrics[name] = e.train_mini_batch(mine, policy_like_loss, micro_batch_size=8, temperature=0.8,
                                           with_entropy=True)
    for name in plans:
        if name == "padded":
            continue
        for key, value in outs[name].items():
            assert (value - outs["padded"][key])[real].abs().max() <= 1e-5, (name, key)
            assert not value[~real].any(), (name, key)
        assert_close_dicts(seen[name], seen["padded"], atol=1e-5)
        assert abs(metrics[name]["loss"] - metrics["padded"]["loss"]) <= 1e-5
    assert metrics["padded"]["grad_norm"] > 0
    dist.barrier()


@pytest.mark.timeout(180)
def test_padding_removal_and_token_budgets_match_the_padded_path(tmp_path):
    run_2_ranks("check_padding_removal", tmp_path, module=__name__)


@pytest.mark.timeout(180)
def test_prompt_sharing_matches_the_padded_path(tmp_path):
    run_2_ranks("check_prompt_sharing", tmp_path, module=__name__)
