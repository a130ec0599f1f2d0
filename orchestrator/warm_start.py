"""The warm-start checkpoint RL begins from: its recipe, the cache check, and the copy shipped in the repo.

`make run` must finish in minutes on a laptop, and a warm start that is right often enough
to learn from takes longer to train than RL needs. So the repo ships the checkpoint that
`make warm-start` produces (bf16 safetensors, ~6 MB), stamped with the recipe that made it;
it is used only when that recipe equals the configured one, otherwise `baton sft` runs.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from orchestrator.assets.char_tokenizer import TOKENIZER_FORMAT

RECIPE_FILE = "baton_warm_start.json"
SHIPPED_ROOT = Path(__file__).parent / "assets" / "warm_starts"
WEIGHTS_FILE = "model.safetensors"


def recipe(cfg: DictConfig) -> dict:
    """Everything a warm start depends on; a checkpoint stamped with a different recipe is stale."""
    return json.loads(json.dumps({
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "sft": {k: v for k, v in OmegaConf.to_container(cfg.sft, resolve=True).items() if k != "output_path"},
        "tiny": OmegaConf.to_container(cfg.model.tiny, resolve=True),
        "seed": cfg.trainer.seed,
        "tokenizer": TOKENIZER_FORMAT,
    }))


def write_recipe(checkpoint_dir: Path, cfg: DictConfig) -> None:
    (Path(checkpoint_dir) / RECIPE_FILE).write_text(json.dumps(recipe(cfg), indent=1, sort_keys=True))


def matches(checkpoint_dir: Path, cfg: DictConfig) -> bool:
    stamp = Path(checkpoint_dir) / RECIPE_FILE
    return stamp.is_file() and json.loads(stamp.read_text()) == recipe(cfg)


def default_path(cfg: DictConfig) -> Path:
    """Where `model=tiny` puts the warm start (configs/model/tiny.yaml's model.path)."""
    return Path(cfg.trainer.cache_dir) / "warmstart" / f"{cfg.task.name}-tiny-{cfg.model.tiny.arch}"


def shipped_path(cfg: DictConfig) -> Path:
    return SHIPPED_ROOT / f"{cfg.task.name}-tiny-{cfg.model.tiny.arch}"


def copy_converting(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """Copy a checkpoint directory, rewriting its floating-point weights in `dtype`; atomic at dst."""
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == WEIGHTS_FILE:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(item).items()}
            save_file(weights, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        elif item.is_file() and item.suffix != ".pt":  # optimizer / scheduler state is not part of a warm start
            shutil.copy2(item, tmp / item.name)
    if (tmp / "config.json").is_file():
        config = json.loads((tmp / "config.json").read_text())
        config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def install_shipped(cfg: DictConfig) -> bool:
    """Copy the shipped warm start to `model.path` (as fp32) if it was made by the configured recipe."""
    src = shipped_path(cfg)
    if not matches(src, cfg):
        return False
    copy_converting(src, Path(cfg.model.path), torch.float32)
    return True


def ship(cfg: DictConfig) -> Path:
    """Store the cached warm start at `model.path` in the repo as bf16 (what `make warm-start` runs last)."""
    src = Path(cfg.model.path)
    if not matches(src, cfg):
        raise SystemExit(f"baton: {src} was not made by the configured SFT recipe; run `baton sft` first")
    dst = shipped_path(cfg)
    dst.parent.mkdir(parents=True, exist_ok=True)
    copy_converting(src, dst, torch.bfloat16)
    return dst
