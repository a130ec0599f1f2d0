"""Reward models on real Ray actors and 2 FSDP2 ranks: `baton rm` learns held-out preferences and
writes an HF checkpoint, the RL reward-model role scores exactly as HF does, and the
SFT -> RM -> PPO pipeline runs end to end."""
from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.entry import sft, train
from orchestrator.rm_training import EVAL_FILE, train_reward_model
from orchestrator.trainer.sft_data import sft_batch
from orchestrator.tracking import read_metrics_jsonl
from orchestrator.tokenizer import load_tokenizer
from workers.runtime import ResourcePool, spawn_colocated

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _parity_pairs(path, n: int) -> None:
    """Prompts with answers where the preferred one is even: a preference a random 2-layer model
    can learn in a few dozen steps (arithmetic correctness would take thousands)."""
    rng = random.Random(0)
    pd.DataFrame({"prompt": [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(n)],
                  "chosen": [str(rng.randrange(0, 100, 2)) for _ in range(n)],
                  "rejected": [str(rng.randrange(1, 100, 2)) for _ in range(n)]}).to_parquet(path)


@pytest.fixture(scope="module")
def trained_rm(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    model = tiny_model(root / "model")
    _parity_pairs(root / "pairs.parquet", 400)
    overrides = [*fast_overrides(model, root, steps=2), f"rm.base_model_path={model}", f"rm.output_path={root / 'rm'}",
                 f"rm.train_files=[{root / 'pairs.parquet'}]", "rm.steps=30", "rm.batch_size=16", "rm.val_pairs=64",
                 "rm.optim.lr=3e-3", "rm.optim.warmup_steps=2"]
    cfg = validate_config(compose_config(overrides), check_files=False)
    return root, cfg, train_reward_model(cfg)


def test_bradley_terry_beats_chance_on_held_out_pairs(trained_rm):
    root, _, result = trained_rm
    assert result["val_pairs"] == 64 and result["train_pairs"] == 336
    assert result["val_accuracy_after"] >= 0.8 > result["val_accuracy_before"] + 0.1, result
    assert json.loads((root / "rm" / EVAL_FILE).read_text()) == pytest.approx(result)


def test_checkpoint_is_an_hf_sequence_classifier_written_atomically(trained_rm):
    root, _, _ = trained_rm
    ckpt = root / "rm"
    assert not list(root.glob(".rm*"))  # no tmp dir left beside it
    assert not (ckpt / "optimizer_dcp").exists() and not (ckpt / "lr_scheduler.pt").exists()
    hf = AutoModelForSequenceClassification.from_pretrained(ckpt)  # no missing / newly initialised weights
    assert type(hf).__name__ == "Qwen2ForSequenceClassification" and hf.config.num_labels == 1
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["Qwen2ForSequenceClassification"]
    assert load_tokenizer(ckpt).pad_token_id == 0


def test_reward_model_role_scores_like_a_direct_hf_forward(trained_rm):
    from workers.roles.reward_model import RewardModelWorker

    root, _, _ = trained_rm
    ckpt = root / "rm"
    overrides = [*fast_overrides(root / "model", root, steps=2), "reward.reward_model.enable=true",
                 f"reward.reward_model.path={ckpt}", "reward.reward_model.micro_batch_size=2"]
    cfg = validate_config(compose_config(overrides), check_files=True)
    tok = load_tokenizer(ckpt)
    rows = [{"prompt": p, "ground_truth": a, "solution": a, "row": i}
            for i, (p, a) in enumerate([("1+1=", "2"), ("1+1=", "3"), ("13+40=", "54"), ("13+40=", "53"),
                                        ("9-99=", "-90")])]  # 5 rows: the 2-rank split pads one
    batch = sft_batch(rows, "solution", tok)
    pool = ResourcePool(name="rm-role-test", nnodes=1, devices_per_node=2, use_gpu=False, cpus_per_worker=1,
                        ready_timeout_s=60)
    group = spawn_colocated(pool, {"reward_model": (RewardModelWorker, {"cfg": cfg})}, timeout_s=120,
                            init_timeout_s=60)["reward_model"]
    try:
        scores = group.compute_rm_score(batch)["rm_scores"]
    finally:
        group.shutdown()
        pool.release()
    hf = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():
        expect = hf(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits[:, 0]
    assert scores.shape == (5,)
    torch.testing.assert_close(scores, expect, atol=1e-5, rtol=0)
    assert scores[0] > scores[1] and scores[2] > scores[3]  # the learned preference, on rollout-layout rows


def test_sft_then_rm_then_ppo_with_the_reward_model(ray_cluster, tmp_path):
    warm = tmp_path / "warm"
    common = [*fast_overrides(warm, tmp_path, steps=2), f"sft.base_model_path={tiny_model(tmp_path / 'base')}",
              "sft.steps=2", "sft.batch_size=8", "sft.micro_batch_size=8",
              "rm.steps=2", "rm.batch_size=4", "rm.val_pairs=8"]
    sft(validate_config(compose_config(common), check_files=False))
    result = train_reward_model(validate_config(compose_config(common), check_files=False))
    rm_path = tmp_path / "cache" / "reward_model" / "arithmetic"  # rm.output_path's default
    assert result["train_pairs"] == 64 - 8 and (rm_path / "model.safetensors").is_file()

    cfg = validate_config(compose_config(["algorithm=ppo", *common, "reward.reward_model.enable=true",
                                          f"reward.reward_model.path={rm_path}", "reward.rule_weight=0"]),
                          check_files=True)
    summary = train(cfg)
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2] and summary["steps"] == 2
    for r in records:
        assert r["critic/vf_loss"] >= 0 and r["actor/grad_norm"] >= 0
        # with rule_weight=0 the score is the reward model's alone: rule rewards (multiples of 1/2 over
        # 8 rows) would make 16 x mean an integer; continuous model scores do not
        assert abs(r["reward/mean"] * 16 - round(r["reward/mean"] * 16)) > 1e-6, r["reward/mean"]
