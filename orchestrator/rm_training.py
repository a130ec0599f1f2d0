"""`baton rm`: train a Bradley-Terry reward model on FSDP2 workers and write it as an HF
sequence-classification checkpoint that `reward.reward_model.path` can point at.

Same shape as `baton sft`: every input is read and checked on the driver first, then one
worker group trains, and the checkpoint appears atomically (tmp dir + os.replace).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from orchestrator.cluster.shared_paths import resolve_shared_paths
from orchestrator.config.errors import ConfigError
from orchestrator.config.model_files import check_model_dir, hf_config
from orchestrator.entry import start_ray, tokenizer_for
from orchestrator.trainer.data import PromptStream
from orchestrator.trainer.pair_data import load_pairs, pair_batch, split_held_out, tokenize_pairs
from workers.engines.fsdp2.checkpoint import OPTIMIZER_DIR, SCHEDULER_FILE
from workers.runtime import ResourcePool, WorkerGroup, spawn_colocated

EVAL_FILE = "rm_eval.json"  # written next to the weights: held-out accuracy before/after, sizes, time


def pairwise_accuracy(group: WorkerGroup, pairs: list[dict[str, Any]], pad_token_id: int) -> float:
    """Fraction of pairs whose chosen response scores strictly above the rejected one."""
    out = group.score_pairs(pair_batch(pairs, pad_token_id))
    return float((out["chosen_scores"] > out["rejected_scores"]).float().mean())


def _check_base(path: str) -> None:
    check_model_dir("rm.base_model_path", path, "run `baton sft` first or point it at one", need_tokenizer=True)


def _max_positions(path: str) -> int | None:
    return hf_config("rm.base_model_path", path).get("max_position_embeddings")


def train_reward_model(cfg: DictConfig) -> dict[str, Any]:
    """Train on rm.train_files (or generated task pairs); returns what rm_eval.json holds."""
    resolve_shared_paths(cfg)
    base = cfg.rm.base_model_path
    _check_base(base)
    tok = tokenizer_for("rm.base_model_path", base)
    pairs = tokenize_pairs(load_pairs(cfg), tok, _max_positions(base))
    train, val = split_held_out(pairs, cfg.rm.val_pairs, cfg.trainer.seed)
    if len(train) < cfg.rm.batch_size:
        raise ConfigError("rm.val_pairs", f"holding out {cfg.rm.val_pairs} of {len(pairs)} pairs leaves "
                          f"{len(train)} to train on, fewer than rm.batch_size={cfg.rm.batch_size}")
    target = Path(cfg.rm.output_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    start_ray(cfg)
    c = cfg.cluster
    pool = ResourcePool(name="rm", nnodes=c.nnodes, devices_per_node=c.devices_per_node, use_gpu=c.use_gpu,
                        cpus_per_worker=c.cpus_per_worker, ready_timeout_s=c.init_timeout_s)
    from workers.roles.rm_trainer import RMTrainerWorker

    group = spawn_colocated(pool, {"rm": (RMTrainerWorker, {"cfg": cfg})}, timeout_s=c.rpc_timeout_s,
                            init_timeout_s=c.init_timeout_s)["rm"]
    stream = PromptStream(train, cfg.rm.batch_size, cfg.trainer.seed, shuffle=True)
    start = time.monotonic()
    try:
        before = pairwise_accuracy(group, val, tok.pad_token_id)
        bar = tqdm(range(cfg.rm.steps), desc="rm", mininterval=1.0, disable=None)
        for _ in bar:
            metrics = group.train_step(pair_batch(stream.next_rows(), tok.pad_token_id))
            loss = metrics[0]["loss"]  # the global mini-batch loss: identical on every rank
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{sum(m['rm/accuracy'] for m in metrics) / len(metrics):.2f}")
        after = pairwise_accuracy(group, val, tok.pad_token_id)
        shutil.rmtree(tmp, ignore_errors=True)
        group.save(str(tmp))
    finally:
        group.shutdown()
        pool.release()
    result = {"val_accuracy_before": before, "val_accuracy_after": after, "val_pairs": len(val),
              "train_pairs": len(train), "steps": cfg.rm.steps, "final_loss": loss,
              "wall_time_s": time.monotonic() - start, "base_model_path": str(base)}
    _finish(tmp, target, tok, result)
    print(f"rm: {cfg.rm.steps} steps in {result['wall_time_s']:.0f}s; held-out pairwise accuracy "
          f"{before:.3f} -> {after:.3f} on {len(val)} pairs -> {target}")
    return result


def _finish(tmp: Path, target: Path, tokenizer: Any, result: dict[str, Any]) -> None:
    """A model directory, not a resumable run: drop optimizer state, add the tokenizer, then swap in."""
    shutil.rmtree(tmp / OPTIMIZER_DIR, ignore_errors=True)
    (tmp / SCHEDULER_FILE).unlink(missing_ok=True)
    tokenizer.save_pretrained(tmp)
    (tmp / EVAL_FILE).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)

