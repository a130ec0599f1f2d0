"""The catalogue of bad inputs: each is rejected by `baton train` before Ray starts, in one line naming the key,
the file and (for data) the row.

`train()` is called for real; the only change is that starting Ray fails the test, so a check that
ran too late (after start-up, as several did before) shows up as that failure instead of passing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from e2e_helpers import fast_overrides, tiny_model
from orchestrator import entry
from orchestrator.config import ConfigError, compose_config, validate_config


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("bad-inputs") / "model")


@pytest.fixture(autouse=True)
def ray_must_not_start(monkeypatch):
    def refuse(cfg):
        raise AssertionError("Ray was started: the bad input was not caught before start-up")

    monkeypatch.setattr(entry, "start_ray", refuse)


def _copy_model(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    return dst


def _parquet(path: Path, prompts: list[str], answers: list[str] | None = None) -> Path:
    pd.DataFrame({"prompt": prompts, "ground_truth": answers or ["1"] * len(prompts)}).to_parquet(path)
    return path


def _train(model: Path, root: Path, *extra: str) -> ConfigError:
    overrides = [*fast_overrides(model, root, steps=2), *extra]
    with pytest.raises(ConfigError) as err:
        entry.train(validate_config(compose_config(overrides), check_files=False))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"config error at {err.value.key}:")
    return err.value


# --- config values --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,key,says", [
    ("+trainer.any_typo=1", "trainer.any_typo", "unknown key"),
    ("rollout.temperature=0", "rollout.temperature", "must be > 0 for training rollouts"),
    ("actor.optim.lr=0", "actor.optim.lr", "must be a finite number > 0, got 0.0"),
    ("critic.optim.lr=-0.001", "critic.optim.lr", "must be a finite number > 0, got -0.001"),
    ("actor.optim.lr=inf", "actor.optim.lr", "must be a finite number > 0, got inf"),
    ("actor.optim.betas=[0.9,1.0]", "actor.optim.betas", "two numbers in [0, 1)"),
    ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite", "'ignore' is not one of: skip, stop"),
    ("trainer.max_restarts=-1", "trainer.max_restarts", "must be >= 0"),
    ("trainer.max_skipped_steps=0", "trainer.max_skipped_steps", "must be > 0"),
], ids=lambda v: v if isinstance(v, str) and "=" in v else "")
def test_bad_config_value(model, tmp_path, override, key, says):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config([*fast_overrides(model, tmp_path, steps=2), override]), check_files=True)
    assert err.value.key == key and says in str(err.value)


def test_free_form_dicts_still_take_new_keys(model, tmp_path):
    cfg = compose_config([*fast_overrides(model, tmp_path, steps=2), "+reward.rule_kwargs.marker=x"])
    assert cfg.reward.rule_kwargs.marker == "x"


# --- data files -----------------------------------------------------------------------------------------------


def test_empty_train_file(model, tmp_path):
    empty = _parquet(tmp_path / "empty.parquet", [])
    err = _train(model, tmp_path, f"data.train_files=[{empty}]", f"data.val_files=[{empty}]")
    assert err.key == "data.train_files[0]" and "has no usable rows" in str(err) and "empty.parquet" in str(err)


def test_too_few_rows_for_one_batch(model, tmp_path):
    small = _parquet(tmp_path / "small.parquet", ["1+1=", "2+2=", "3+3="])
    err = _train(model, tmp_path, f"data.train_files=[{small}]")
    assert err.key == "data.train_batch_size" and "hold only 3 usable prompts" in str(err)


def test_empty_val_file(model, tmp_path):
    train = _parquet(tmp_path / "train.parquet", ["1+1="] * 8)
    val = _parquet(tmp_path / "val.parquet", [])
    err = _train(model, tmp_path, f"data.train_files=[{train}]", f"data.val_files=[{val}]")
    assert err.key == "data.val_files[0]" and "val.parquet' has no usable rows" in str(err)


def test_not_a_parquet_file(model, tmp_path):
    csv = tmp_path / "data.parquet"
    csv.write_text("prompt,ground_truth\n1+1=,2\n")
    err = _train(model, tmp_path, f"data.train_files=[{csv}]")
    assert err.key == "data.train_files[0]" and "is not a readable parquet file" in str(err)


def test_missing_column(model, tmp_path):
    path = tmp_path / "q.parquet"
    pd.DataFrame({"question": ["1+1="] * 8, "ground_truth": ["2"] * 8}).to_parquet(path)
    err = _train(model, tmp_path, f"data.train_files=[{path}]")
    assert err.key == "data.train_files[0]" and "has no column 'prompt'" in str(err)


def test_text_outside_the_tokenizers_alphabet(model, tmp_path):
    path = _parquet(tmp_path / "gsm.parquet", ["what is 1+1?"] * 5 + ["What is 2+2?", "héllo", "ok"])
    err = _train(model, tmp_path, f"data.train_files=[{path}]")
    assert err.key == "data.train_files[0]"
    assert "row 5: column 'prompt' has characters the tokenizer cannot represent ('W')" in str(err)
    assert "2 such rows from here on" in str(err)


# --- model directories ----------------------------------------------------------------------------------------


def test_corrupt_config_json(model, tmp_path):
    bad = _copy_model(model, tmp_path / "m")
    (bad / "config.json").write_text('{"model_type": "qwen2",')
    err = _train(bad, tmp_path)
    assert err.key == "model.path" and "config.json' is not valid JSON" in str(err)


def test_truncated_safetensors(model, tmp_path):
    bad = _copy_model(model, tmp_path / "m")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = _train(bad, tmp_path)
    assert err.key == "model.path" and "model.safetensors' is truncated: its header promises" in str(err)


def test_safetensors_that_is_not_one(model, tmp_path):
    bad = _copy_model(model, tmp_path / "m")
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    err = _train(bad, tmp_path)
    assert err.key == "model.path" and "is not a safetensors file" in str(err)


def test_model_without_weights(model, tmp_path):
    bad = _copy_model(model, tmp_path / "m")
    (bad / "model.safetensors").unlink()
    err = _train(bad, tmp_path)
    assert err.key == "model.path" and "has no *.safetensors weights" in str(err)


def test_model_without_tokenizer(model, tmp_path):
    bad = _copy_model(model, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bad / name).unlink()
    err = _train(bad, tmp_path)
    assert err.key == "model.path" and "has no tokenizer" in str(err)


def test_index_naming_a_missing_shard(model, tmp_path):
    bad = _copy_model(model, tmp_path / "m")
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    err = _train(bad, tmp_path)
    assert err.key == "model.path" and "names shards that are not there: model-00002.safetensors" in str(err)
