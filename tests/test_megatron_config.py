"""backend=megatron: invalid parallel layouts are rejected before Ray starts, each with its own message naming the key."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from e2e_helpers import fast_overrides, tiny_model
from orchestrator import entry
from orchestrator.config import ConfigError, compose_config, validate_config


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """2 layers, 2 attention heads, 1 KV head (tiny_model)."""
    return tiny_model(tmp_path_factory.mktemp("megatron-config") / "model")


@pytest.fixture(autouse=True)
def ray_must_not_start(monkeypatch):
    def refuse(cfg):
        raise AssertionError("Ray was started: the bad layout was not caught before start-up")

    monkeypatch.setattr(entry, "start_ray", refuse)


def _rejected(model: Path, root: Path, *overrides: str) -> ConfigError:
    cfg = compose_config(["backend=megatron", *fast_overrides(model, root, steps=2), *overrides])
    with pytest.raises(ConfigError) as err:
        entry.train(validate_config(cfg, check_files=False))
    assert "\n" not in str(err.value)
    return err.value


CASES = [
    (["actor.megatron.tensor_model_parallel_size=4"], "actor.megatron.tensor_model_parallel_size",
     "tensor x pipeline parallel = 4 x 1 = 4 does not divide the 2 ranks"),
    (["actor.megatron.tensor_model_parallel_size=2"], "actor.megatron.tensor_model_parallel_size",
     "2 does not divide the model's 1 key/value heads"),
    (["cluster.devices_per_node=3", "actor.megatron.pipeline_model_parallel_size=3", "actor.ppo_mini_batch_size=3",
      "data.train_batch_size=3", "rm.batch_size=3"], "actor.megatron.pipeline_model_parallel_size", "3 does not divide the model's 2 layers"),
    (["actor.megatron.sequence_parallel=true"], "actor.megatron.sequence_parallel",
     "it needs tensor_model_parallel_size > 1"),
    (["actor.megatron.pipeline_model_parallel_size=2", "rollout.n=4", "actor.micro_batch_size=3"],
     "actor.micro_batch_size", "8 rows per data-parallel group per mini-batch"),
    (["actor.use_kl_loss=true", "ref.megatron.pipeline_model_parallel_size=2"], "ref.megatron.pipeline_model_parallel_size",
     "differs from actor.megatron.pipeline_model_parallel_size=1"),
    (["trainer.backend=deepspeed"], "trainer.backend", "'deepspeed' is not one of: fsdp2, megatron"),
]


@pytest.mark.parametrize("overrides,key,says", CASES, ids=[c[1] + ":" + c[2][:24] for c in CASES])
def test_invalid_parallel_layout(model, tmp_path, overrides, key, says):
    err = _rejected(model, tmp_path, *overrides)
    assert err.key == key and says in str(err), str(err)


def test_heads_not_divisible_by_tp(model, tmp_path):
    wide = tmp_path / "m"
    shutil.copytree(model, wide)
    conf = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**conf, "num_attention_heads": 3, "num_key_value_heads": 3,
                                                  "hidden_size": 63}))
    err = _rejected(wide, tmp_path, "actor.megatron.tensor_model_parallel_size=2")
    assert err.key == "actor.megatron.tensor_model_parallel_size" and "does not divide the model's 3 attention heads" in str(err)


@pytest.mark.parametrize("change,says", [
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "rope scaling 'yarn'"),
    ({"hidden_act": "gelu"}, "only SwiGLU"),
])
def test_architecture_it_cannot_convert(model, tmp_path, change, says):
    odd = tmp_path / "m"
    shutil.copytree(model, odd)
    conf = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**conf, **change}))
    err = _rejected(odd, tmp_path)
    assert err.key == "model.path" and "backend=megatron cannot convert" in str(err) and says in str(err)


def test_a_valid_layout_passes(model, tmp_path):
    cfg = validate_config(compose_config(["backend=megatron", *fast_overrides(model, tmp_path, steps=2),
                                          "actor.megatron.pipeline_model_parallel_size=2"]), check_files=True)
    assert cfg.trainer.backend == "megatron" and cfg.ref.megatron.pipeline_model_parallel_size == 2
