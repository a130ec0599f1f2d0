"""The warm-start cache and the copy shipped in the repo: used only when its recipe matches the config."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2e_helpers import tiny_model
from orchestrator import warm_start
from orchestrator.config import compose_config


def _cfg(tmp_path: Path, *extra: str):
    return compose_config([f"model.path={tmp_path / 'cache' / 'warm'}", f"trainer.cache_dir={tmp_path / 'cache'}",
                           *extra])


@pytest.fixture()
def shipped_root(tmp_path, monkeypatch):
    root = tmp_path / "shipped"
    monkeypatch.setattr(warm_start, "SHIPPED_ROOT", root)  # ship into a temp dir, not the repo
    return root


def _fake_sft_output(cfg, tmp_path: Path) -> Path:
    """A real saved model at model.path, stamped as `baton sft` stamps it."""
    src = tiny_model(tmp_path / "trained")
    dst = Path(cfg.model.path)
    dst.mkdir(parents=True)
    for item in src.iterdir():
        dst.joinpath(item.name).write_bytes(item.read_bytes())
    (dst / "lr_scheduler.pt").write_bytes(b"training state")  # `baton sft` leaves these; a warm start must not ship them
    (dst / "optimizer_dcp").mkdir()
    (dst / "optimizer_dcp" / "__0_0.distcp").write_bytes(b"optimizer shard")
    warm_start.write_recipe(dst, cfg)
    return dst


def test_recipe_tracks_task_and_sft_settings(tmp_path):
    base = _cfg(tmp_path)
    assert warm_start.recipe(base) == warm_start.recipe(_cfg(tmp_path, "trainer.total_steps=3"))  # RL keys: same
    assert warm_start.recipe(base) != warm_start.recipe(_cfg(tmp_path, "sft.steps=7"))
    assert warm_start.recipe(base) != warm_start.recipe(_cfg(tmp_path, "task.params.worked_fraction=0.5"))
    assert warm_start.recipe(base) != warm_start.recipe(_cfg(tmp_path, "model.tiny.hidden_size=128"))


def test_ship_then_install_round_trips_weights_through_bf16(tmp_path, shipped_root):
    cfg = _cfg(tmp_path)
    made = _fake_sft_output(cfg, tmp_path)
    original = load_file(made / "model.safetensors")
    shipped = warm_start.ship(cfg)
    assert shipped.parent == shipped_root
    stored = load_file(shipped / "model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.bfloat16}
    assert json.loads((shipped / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert not (shipped / "lr_scheduler.pt").exists() and not (shipped / "optimizer_dcp").exists()

    shutil.rmtree(made)
    assert warm_start.install_shipped(cfg)
    installed = load_file(Path(cfg.model.path) / "model.safetensors")
    for name, tensor in original.items():
        assert installed[name].dtype == torch.float32
        assert torch.equal(installed[name], tensor.to(torch.bfloat16).float()), name
    assert warm_start.matches(Path(cfg.model.path), cfg)


def test_shipped_copy_with_another_recipe_is_not_used(tmp_path, shipped_root):
    cfg = _cfg(tmp_path)
    _fake_sft_output(cfg, tmp_path)
    warm_start.ship(cfg)
    other = _cfg(tmp_path, "sft.steps=11")
    assert not warm_start.install_shipped(other)
    assert not warm_start.matches(Path(other.model.path), other)


def test_ship_refuses_a_checkpoint_from_another_recipe(tmp_path, shipped_root):
    cfg = _cfg(tmp_path)
    _fake_sft_output(cfg, tmp_path)
    with pytest.raises(SystemExit, match="baton sft"):
        warm_start.ship(_cfg(tmp_path, "sft.steps=11"))
