"""`baton bench e2e`: the TRL side must run Baton's job, not a look-alike (TRL itself lives in .venv-peers)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from orchestrator.config import compose_config, validate_config
from orchestrator.rewards.rule_rewards import final_answer as baton_final_answer

PEER = Path(__file__).resolve().parents[1] / "orchestrator" / "bench" / "peers" / "trl_grpo.py"


def load_peer():
    spec = importlib.util.spec_from_file_location("trl_grpo_peer", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # stdlib only at import time: it must load without TRL installed
    return module


@pytest.mark.parametrize("text", ["#85", " #85 ", "7+8=15;3+4+1=8;#85", "85", "#8", "#85#86", "#-13", "", "##", "# 85"])
def test_peer_reward_is_batons_final_answer(text):
    peer = load_peer()
    for truth in ("85", "86", "-13"):
        assert peer.final_answer(text, truth) == baton_final_answer(text, truth, eos_token=None), (text, truth)


def test_peer_config_has_batons_batch_shape(tmp_path):
    from orchestrator.bench.e2e_bench import check_job_matches, peer_job

    cfg = validate_config(compose_config([f"trainer.cache_dir={tmp_path}/cache"]),
                          check_files=False)
    check_job_matches(cfg)
    job = peer_job(cfg, steps=3, out=tmp_path)
    json.dumps(job)  # it travels as JSON
    kw = load_peer().grpo_config_kwargs(job)
    rows_per_generation = kw["per_device_train_batch_size"] * kw["steps_per_generation"]
    assert rows_per_generation == cfg.data.train_batch_size * cfg.rollout.n
    assert kw["num_generations"] == cfg.rollout.n
    rows_per_update = kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"]
    assert rows_per_update == cfg.actor.ppo_mini_batch_size * cfg.rollout.n
    assert kw["max_steps"] == 3 * cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size  # optimizer steps
    assert kw["beta"] == cfg.actor.kl_loss_coef and kw["learning_rate"] == cfg.actor.optim.lr
    assert kw["max_completion_length"] == cfg.rollout.max_new_tokens
    assert len(job["val_rows"]) == cfg.data.val_size
    assert kw["top_k"] == 0 and kw["temperature"] == cfg.rollout.temperature


def test_peer_refuses_a_job_it_does_not_mirror(tmp_path):
    from orchestrator.bench.e2e_bench import check_job_matches

    cfg = validate_config(compose_config(["algorithm=rloo"]), check_files=False)
    with pytest.raises(SystemExit, match="algorithm.adv_estimator"):
        check_job_matches(cfg)
