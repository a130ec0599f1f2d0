"""On-policy distillation (algorithm=opd): the estimator by hand, where the teacher comes from, and what
validation refuses before any actor starts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from e2e_helpers import tiny_model
from orchestrator import teacher_model
from orchestrator.advantages import AdvantageInputs, compute_advantage, get_advantage_estimator
from orchestrator.config import compose_config, validate_config
from orchestrator.config.errors import ConfigError
from orchestrator.config.validate import check_model_paths

OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -1.0, 0.0]])
TEACHER = torch.tensor([[-0.5, -3.0, -1.0], [-1.0, -1.0, -4.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def _inputs(scores, uids, teacher=TEACHER):
    rewards = torch.zeros(2, 3)
    rewards[0, 1], rewards[1, 0] = scores  # on each row's last valid token
    return AdvantageInputs(rewards, MASK, np.array(uids, dtype=object), None, None, log_probs=OLD,
                           teacher_log_probs=teacher)


def _opd(data, distill=1.0, task=0.0):
    return compute_advantage("opd", data, {"distill_coef": distill, "task_reward_coef": task,
                                           "norm_adv_by_std": True, "eps": 1e-6})


def test_registry_flags():
    entry = get_advantage_estimator("opd")
    assert entry.needs_teacher and not entry.needs_critic and not entry.uses_groups


def test_per_token_negative_reverse_kl_discount_zero():
    adv, returns = _opd(_inputs((1.0, 0.0), ["a", "b"]), distill=2.0)
    # (teacher - old) * 2 on valid tokens only; no return-to-go: token 0 of row 0 ignores token 1's -1
    assert torch.allclose(adv, torch.tensor([[1.0, -2.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(adv, returns)


def test_task_reward_mix_is_grpo_on_the_group():
    adv, _ = _opd(_inputs((1.0, 0.0), ["g", "g"]), distill=1.0, task=0.5)
    # scores 1, 0 in one group: mean 0.5, Bessel std 0.70711 -> GRPO +-0.70711, times 0.5 = +-0.353553
    expect = torch.tensor([[0.5 + 0.353553, -1.0 + 0.353553, 0.0], [0.5 - 0.353553, 0.0, 0.0]])
    assert torch.allclose(adv, expect, atol=1e-5)


def test_equal_rewards_and_equal_policies_give_zero():
    adv, _ = _opd(_inputs((1.0, 1.0), ["g", "g"], teacher=OLD.clone()), task=1.0)
    assert torch.equal(adv, torch.zeros(2, 3))


def test_missing_teacher_log_probs_is_an_error():
    data = AdvantageInputs(torch.zeros(2, 3), MASK, np.array(["a", "b"], dtype=object), None, None)
    with pytest.raises(ValueError, match="teacher_log_probs"):
        _opd(data)


# --- where the teacher comes from ------------------------------------------------------------------


def _fake_checkpoint(root, model):
    """The layout checkpointing.save_checkpoint writes: step_N/{actor/, trainer_state.json} and a latest pointer."""
    step = root / "checkpoints" / "step_3"
    (step / "actor").mkdir(parents=True)
    for f in model.iterdir():
        (step / "actor" / f.name).write_bytes(f.read_bytes())
    (step / "trainer_state.json").write_text(json.dumps({"step": 3}))
    (root / "checkpoints" / "latest").write_text("step_3")
    return step


def test_teacher_path_accepts_a_model_a_step_a_run_and_latest(tmp_path):
    model = tiny_model(tmp_path / "model")
    step = _fake_checkpoint(tmp_path / "run", model)
    assert teacher_model.resolve(str(model)) == model
    for given in (step, step.parent, step.parent / "latest"):
        assert teacher_model.resolve(str(given)) == step / "actor"


def test_opd_without_a_teacher_fails_naming_teacher_path():
    with pytest.raises(ConfigError, match=r"teacher\.path"):
        validate_config(compose_config(["algorithm=opd", "teacher.path=null"]), check_files=False)


def test_a_teacher_with_another_vocabulary_is_refused(tmp_path):
    from orchestrator.assets.tiny_model import build_tiny_model

    student = tiny_model(tmp_path / "student")
    other = tmp_path / "other"
    build_tiny_model(other, arch="qwen2", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                     intermediate_size=128, max_position_embeddings=64, seed=0, tie_word_embeddings=True)
    conf = json.loads((other / "config.json").read_text())
    conf["vocab_size"] += 7
    (other / "config.json").write_text(json.dumps(conf))
    cfg = validate_config(compose_config(["algorithm=opd", f"model.path={student}", f"teacher.path={other}"]),
                          check_files=False)
    with pytest.raises(ConfigError, match=r"teacher\.path.*vocab_size"):
        check_model_paths(cfg)


def test_the_shipped_teacher_installs_at_the_default_path(tmp_path):
    cfg = compose_config(["algorithm=opd", f"trainer.cache_dir={tmp_path}"])
    assert teacher_model.shipped_path(cfg).is_dir(), "the repo ships a teacher for the built-in task"
    teacher_model.prepare(cfg)
    assert cfg.teacher.path == str(teacher_model.default_path(cfg))
    conf = json.loads((teacher_model.default_path(cfg) / "config.json").read_text())
    assert conf["torch_dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_opd_smoke_as_typed_distils_from_the_shipped_teacher(ray_cluster, tmp_path):
    """`baton train algorithm=opd preset=smoke`: the shipped warm start learns from the shipped teacher."""
    from orchestrator.entry import train
    from orchestrator.tracking import read_metrics_jsonl

    cfg = validate_config(compose_config(["algorithm=opd", "preset=smoke", f"trainer.cache_dir={tmp_path / 'cache'}",
                                          f"trainer.output_dir={tmp_path / 'run'}"]), check_files=False)
    summary = train(cfg)
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert summary["steps"] == 2 and [r["step"] for r in records] == [1, 2]
    assert (tmp_path / "cache" / "teacher" / "arithmetic-tiny-qwen2" / "model.safetensors").is_file()
    for r in records:
        # a teacher 46 points stronger than the warm start disagrees with the student's samples
        assert r["teacher/reverse_kl"] != 0.0 and np.isfinite(r["teacher/reverse_kl"])
        assert r["actor/grad_norm"] > 0 and "timing_s/ref" not in r
