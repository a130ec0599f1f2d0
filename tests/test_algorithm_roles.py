"""Which worker groups an algorithm gets (critic for GAE, reward model when enabled, nothing else), and
that a config asking for a role without its model fails before Ray starts, naming the key."""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys

import pytest

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.entry import train
from orchestrator.trainer.roles import build_roles, role_specs


def _cfg(tmp_path, *overrides: str, check_files: bool = False):
    model = tiny_model(tmp_path / "model")
    return validate_config(compose_config([*overrides, *fast_overrides(model, tmp_path, steps=2)]),
                           check_files=check_files)


def test_role_specs_follow_the_estimator_and_the_reward_switch(tmp_path):
    from workers.roles.critic import CriticWorker
    from workers.roles.reward_model import RewardModelWorker

    ppo = role_specs(_cfg(tmp_path, "algorithm=ppo"), 0)
    assert list(ppo) == ["actor", "ref", "critic"] and ppo["critic"][0] is CriticWorker
    assert list(role_specs(_cfg(tmp_path, "algorithm=grpo"), 0)) == ["actor", "ref"]
    assert list(role_specs(_cfg(tmp_path, "algorithm=rloo"), 0)) == ["actor", "ref"]  # KL in the reward
    assert list(role_specs(_cfg(tmp_path, "algorithm=dapo"), 0)) == ["actor"]
    with_rm = role_specs(_cfg(tmp_path, "algorithm=grpo", "reward.reward_model.enable=true",
                              f"reward.reward_model.path={tmp_path / 'model'}"), 0)
    assert list(with_rm) == ["actor", "ref", "reward_model"] and with_rm["reward_model"][0] is RewardModelWorker


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("algorithm,expected", [("ppo", ["actor", "ref", "critic"]), ("grpo", ["actor", "ref"])])
def test_built_roles_are_live_worker_groups(ray_cluster, tmp_path, algorithm, expected):
    from workers.roles.critic import CriticWorker

    roles = build_roles(_cfg(tmp_path, f"algorithm={algorithm}", check_files=True), 0)
    try:
        assert roles.names() == expected and roles.reward_model is None
        assert (roles.critic is not None) == (algorithm == "ppo")
        if roles.critic is not None:
            assert roles.critic.role_cls is CriticWorker and roles.critic.world_size == 2
            assert len(roles.critic.peak_memory_bytes()) == 2  # both ranks answer
    finally:
        roles.shutdown()


def test_missing_role_model_paths_fail_before_any_actor_starts(tmp_path):
    model = tiny_model(tmp_path / "model")
    base = fast_overrides(model, tmp_path, steps=2)
    nowhere = tmp_path / "nowhere"
    for overrides, message in [
        (["algorithm=ppo", f"critic.model_path={nowhere}"], "critic.model_path: '"),
        (["reward.reward_model.enable=true", f"reward.reward_model.path={nowhere}"], "reward.reward_model.path: '"),
    ]:
        with pytest.raises(ConfigError, match=message):  # train() checks files before it starts Ray
            train(validate_config(compose_config([*overrides, *base]), check_files=False))
    other = tmp_path / "other-vocab"
    shutil.copytree(model, other)
    conf = json.loads((model / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**conf, "vocab_size": conf["vocab_size"] + 1}))
    with pytest.raises(ConfigError, match=r"reward.reward_model.path: .* vocab_size=.* but the policy"):
        validate_config(compose_config(["reward.reward_model.enable=true", f"reward.reward_model.path={other}",
                                        *base]), check_files=True)


def test_cli_rejects_a_critic_algorithm_without_a_critic_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "algorithm=ppo", "critic.model_path=null",
                          f"trainer.cache_dir={tmp_path}"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2
    assert "config error at critic.model_path: algorithm 'ppo' (adv_estimator=gae) needs a critic" in res.stderr
    assert "Ray" not in res.stdout + res.stderr
