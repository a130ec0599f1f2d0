"""Every algorithm in configs/algorithm/ trains 2 steps end to end: real Ray actors, 2 FSDP2 ranks
over gloo, the built-in rollout, a tiny random model. One override swaps the algorithm."""
from __future__ import annotations

import math

import pytest
from transformers import AutoModelForCausalLM

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.config.load import list_groups
from orchestrator.entry import train
from orchestrator.tracking import read_metrics_jsonl
from orchestrator.assets.tiny_model import build_tiny_model
from orchestrator.trainer.roles import needs_critic, needs_ref, needs_teacher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ALGORITHMS = ["cispo", "clip_cov", "dapo", "drgrpo", "gpg", "grpo", "grpo_passk", "gspo", "kl_cov", "opd", "opo", "ppo",
              "reinforce_pp", "reinforce_pp_baseline", "remax", "rloo", "sapo"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("algorithms") / "model")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random teacher twice the student's width and depth: a teacher need not have the student's shape."""
    path = tmp_path_factory.mktemp("algorithms") / "teacher"
    build_tiny_model(path, arch="qwen2", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                     intermediate_size=256, max_position_embeddings=64, seed=1, tie_word_embeddings=True)
    return path


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """The shipped warm start, installed as `make run` installs it."""
    from orchestrator import warm_start as shipped

    cfg = compose_config([f"trainer.cache_dir={tmp_path_factory.mktemp('algorithms') / 'cache'}"])
    assert shipped.install_shipped(cfg)
    return cfg.model.path


def test_every_algorithm_yaml_is_covered():
    assert sorted(list_groups()["algorithm"]) == ALGORITHMS


# Dynamic sampling refills a step with further rollout rounds whose prompt/response widths differ (1- and
# 2-digit operands): the dapo case also checks that rounds of different widths join into one batch.
# fast_overrides' 2 samples and 2 mini-batches per step: pass@k needs k <= rollout.n, OPO one update per batch.
# pass@k needs 0/1 rewards, which a random model never earns: it starts from the shipped warm start ({warm_start}).
EXTRA = {"grpo_passk": ["algorithm.passk_k=2", "rollout.n=4", "data.train_batch_size=8", "actor.ppo_mini_batch_size=4",
                        "rollout.max_new_tokens=6", "reward.rule_fn=final_answer", "model.path={warm_start}"],
         "opo": ["actor.ppo_mini_batch_size=4"]}
CASES = [pytest.param(a, EXTRA.get(a, []), id=a) for a in ALGORITHMS]


@pytest.mark.parametrize("algorithm,extra", CASES)
def test_algorithm_trains_two_steps(ray_cluster, model, teacher, warm_start, tmp_path, algorithm, extra):
    extra = [e.format(warm_start=warm_start) for e in extra]
    overrides = [f"algorithm={algorithm}", *fast_overrides(model, tmp_path, steps=2), *extra, f"teacher.path={teacher}"]
    cfg = validate_config(compose_config(overrides), check_files=True)
    summary = train(cfg)
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2] and summary["steps"] == 2
    for r in records:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
        assert r["actor/grad_norm"] > 0 and r["actor/step_skipped"] == 0.0
        assert r["sync/logprob_max_abs_diff"] < 1e-4  # rollout weights == trainer weights after each sync
        # the roles the algorithm needs ran, and only those
        assert ("timing_s/values" in r) == ("critic/vf_loss" in r) == needs_critic(cfg)
        assert ("timing_s/ref" in r) == needs_ref(cfg)
        assert ("dynamic_sampling/rounds" in r) == cfg.algorithm.dynamic_sampling.enable
        assert ("kl_in_reward/kl" in r) == cfg.algorithm.use_kl_in_reward
        assert ("actor/kl_loss" in r) == cfg.actor.use_kl_loss
        assert ("timing_s/teacher" in r) == ("teacher/reverse_kl" in r) == needs_teacher(cfg)
    if needs_critic(cfg):
        assert all(r["critic/grad_norm"] > 0 and r["critic/lr"] > 0 for r in records)
    if cfg.algorithm.dynamic_sampling.enable:
        assert all(r["dynamic_sampling/groups_kept"] >= 1 for r in records)
        assert any(r["dynamic_sampling/rounds"] > 1 for r in records)  # a refill round happened

    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    assert (ckpt / "critic" / "model.safetensors").is_file() == needs_critic(cfg)
    before = AutoModelForCausalLM.from_pretrained(cfg.model.path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ckpt / "actor").state_dict()
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0  # the policy moved
