"""Bad configs fail at composition/validation, before Ray starts, with the offending key path."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from e2e_helpers import tiny_model
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.config.validate import check_model_paths

BAD = [
    (["trainer.bogus=1"], "trainer.bogus", "unknown key"),
    (["actor.optim.lrr=0.1"], "actor.optim.lrr", "unknown key"),
    (["trainer.total_steps=many"], "trainer.total_steps", "could not be converted to Integer"),
    (["rollout.temperature=hot"], "rollout.temperature", "could not be converted to Float"),
    (["algorithm=nope"], "algorithm", "no config named 'algorithm/nope'"),
    (["model=hf"], "model.path", "required value is not set"),
    (["data.train_batch_size=30", "actor.ppo_mini_batch_size=16"], "actor.ppo_mini_batch_size",
     "does not divide data.train_batch_size=30"),
    (["actor.ppo_mini_batch_size=3", "data.train_batch_size=9", "rollout.n=1", "algorithm=reinforce_pp"],
     "actor.ppo_mini_batch_size", "not divisible by the data-parallel size 2"),
    (["algorithm=ppo", "critic.model_path=null"], "critic.model_path", "needs a critic"),
    (["reward.reward_model.enable=true"], "reward.reward_model.path", "no model path is set"),
    (["rollout.n=1"], "rollout.n", "needs rollout.n >= 2"),
    (["rollout.name=sglang"], "rollout.name", "'sglang' is not one of: builtin, vllm"),
    (["cluster.placement=spread"], "cluster.placement", "'spread' is not one of: colocated, split"),
    (["rollout.top_p=1.5"], "rollout.top_p", "must be in (0, 1]"),
    (["model.remove_padding=false"], "model.share_prompts", "needs model.remove_padding=true"),
    (["model.attn_implementation=flash"], "model.attn_implementation", "'flash' is not one of"),
    (["model.attn_implementation=varlen", "model.remove_padding=false", "model.share_prompts=false"],
     "model.attn_implementation", "varlen packs rows with their padding removed"),
    (["actor.policy_loss.name=trpo"], "actor.policy_loss.name", "'trpo' is not one of"),
    (["algorithm.adv_estimator=vtrace"], "algorithm.adv_estimator", "'vtrace' is not one of"),
    (["actor.loss_agg_mode=token_sum"], "actor.loss_agg_mode", "'token_sum' is not one of"),
    (["trainer.loggers=[jsonl,wandb]"], "trainer.loggers[1]", "'wandb' is not one of"),
    (["reward.rule_fn=exactly"], "reward.rule_fn", "'exactly' is not one of"),
    (["trainer.total_steps=0"], "trainer.total_steps", "must be > 0"),
    (["actor.optim.schedule=linear"], "actor.optim.schedule", "'linear' is not one of: constant, cosine"),
    (["algorithm.rollout_correction.mode=auto", "hybrid.verify_every=0"], "algorithm.rollout_correction.mode",
     "needs hybrid.verify_every > 0"),
    (["algorithm.rollout_correction.equal_tolerance=-1"], "algorithm.rollout_correction.equal_tolerance",
     "must be >= 0"),
]


@pytest.mark.parametrize("overrides,key,message", BAD, ids=[o[0][0] for o in BAD])
def test_invalid_config_is_rejected_with_its_key(overrides, key, message):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides), check_files=False)
    assert err.value.key == key
    assert message in str(err.value)
    assert str(err.value).startswith(f"config error at {key}:")
    assert "\n" not in str(err.value)


def test_every_algorithm_composes_and_validates():
    for algo in ("ppo", "grpo", "drgrpo", "dapo", "cispo", "gspo", "reinforce_pp", "reinforce_pp_baseline",
                 "rloo", "remax"):
        cfg = validate_config(compose_config([f"algorithm={algo}"]), check_files=False)
        assert cfg.algorithm.name == algo


def test_missing_model_dir_is_named(tmp_path):
    cfg = compose_config([f"model.path={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"model.path: '.*nowhere' is not a HF checkpoint directory"):
        check_model_paths(cfg)


def test_missing_data_file_is_named(tmp_path):
    model = tiny_model(tmp_path / "model")
    cfg = compose_config([f"model.path={model}", "data.train_files=[/no/such.parquet]"])
    with pytest.raises(ConfigError, match=r"data.train_files\[0\]: file '/no/such.parquet' does not exist"):
        check_model_paths(cfg)


def _baton(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_rejects_bad_config_before_any_actor_starts(tmp_path):
    res = _baton("train", "rollout.top_k=0", f"trainer.cache_dir={tmp_path}")
    assert res.returncode == 2
    assert "config error at rollout.top_k: must be -1 (off) or >= 1, got 0" in res.stderr
    assert "Ray" not in res.stderr + res.stdout


def test_cli_prints_composed_config_and_lists_groups():
    res = _baton("train", "--cfg", "job", "algorithm=grpo")
    assert res.returncode == 0, res.stderr
    assert "adv_estimator: grpo" in res.stdout and "use_kl_loss: true" in res.stdout
    res = _baton("train", "--help")
    assert "algorithm: cispo, clip_cov, dapo, drgrpo, gpg, grpo, grpo_passk, gspo, kl_cov, opd, opo, ppo" in res.stdout and "rollout: builtin, vllm" in res.stdout


def test_gpu_profile_prints_without_a_model_path_and_ignores_nothing():
    res = _baton("train", "--cfg", "job", "model=hf", "cluster=gpu", "rollout=vllm")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# required, not set yet: model.path\n")
    for line in ("kv_cache_bytes: 0", "enforce_eager: false", "sleep_level: 2", "dtype: bfloat16",
                 "object_store_bytes: 0", "local_num_cpus: 0", "micro_batch_size: 4"):
        assert f"  {line}\n" in res.stdout, line


@pytest.mark.parametrize("overrides,key", [
    (["actor.megatron.tensor_model_parallel_size=2"], "actor.megatron"),  # fsdp2 would ignore it
    (["cluster.address=auto", "cluster.local_num_cpus=0"], "cluster.object_store_bytes"),  # a joined cluster's own
    (["cluster.local_num_cpus=0"], "cluster.local_num_cpus"),
])
def test_options_that_would_be_ignored_are_rejected(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides), check_files=False)
    assert err.value.key == key
