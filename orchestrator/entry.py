"""What `baton train`, `baton sft` and `baton run-default` do, from a validated config."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from orchestrator import teacher_model, warm_start
from orchestrator.assets.tiny_model import build_tiny_model
from orchestrator.cluster.shared_paths import resolve_shared_paths
from orchestrator.config.errors import ConfigError
from orchestrator.config.validate import check_model_paths
from orchestrator.ray_cluster import init_ray
from orchestrator.run_errors import RunFailed, TrainingStopped
from orchestrator.tasks.registry import get_task
from orchestrator.tracking import (OutputPaths, PeakMemory, RunHealth, RunSummary, Tracker, plot_curves,
                                   process_peak_rss_bytes)
from orchestrator.tokenizer import TokenizerError, load_tokenizer
from orchestrator.trainer.checkpointing import checkpoint_step
from orchestrator.trainer.data import PromptStream, load_rows, load_train_val_rows, task_files
from orchestrator.trainer.loop import RLTrainer
from orchestrator.trainer.recovery import run_with_recovery
from orchestrator.trainer.roles import build_roles, needs_teacher
from orchestrator.trainer.run_dir import claim_run_dir
from orchestrator.trainer.sft_data import sft_batch
from workers.runtime import ResourcePool, spawn_colocated

log = logging.getLogger("baton")


def start_ray(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(cfg.trainer.torch_threads)
    c = cfg.cluster
    init_ray(c.address, c.local_num_cpus if not c.address else None, None if c.use_gpu else 0, c.object_store_bytes,
             env_vars={"TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.environ.get("PYTHONPATH", "")})


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def tokenizer_for(key: str, path: str):
    """The tokenizer saved with the model at `path` (config key `key` names it in errors)."""
    try:
        return load_tokenizer(path)
    except TokenizerError as err:
        raise ConfigError(key, str(err)) from None


def ensure_model_for_train(cfg: DictConfig) -> None:
    """`baton train` on a fresh clone: the default warm-start path is filled from the shipped copy, as
    `make run` would, instead of failing with "run `baton sft` first"."""
    path = Path(cfg.model.path)
    if not path.exists() and path == warm_start.default_path(cfg) and warm_start.install_shipped(cfg):
        print(f"warm start: shipped {warm_start.shipped_path(cfg)} -> {cfg.model.path}")


def train(cfg: DictConfig, *, classes: dict[str, type] | None = None) -> dict:
    """Every input checked, then Ray, then RL with automatic recovery. `classes` swaps role classes (tests)."""
    resolve_shared_paths(cfg)
    ensure_model_for_train(cfg)
    if needs_teacher(cfg):
        teacher_model.prepare(cfg)
    check_model_paths(cfg)  # files on disk: still before any actor starts
    tok = tokenizer_for("model.path", cfg.model.path)
    train_rows, val_rows = load_train_val_rows(cfg, tok)
    out = claim_run_dir(cfg)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    start_ray(cfg)
    tracker = Tracker(out, list(cfg.trainer.loggers), cfg.trainer.experiment_name)
    state: dict = {"trainer": None, "workers": {}, "loop_s": 0.0}

    def attempt(resume: bool) -> dict:
        state["trainer"] = None
        roles = build_roles(cfg, tok.pad_token_id, classes=classes)
        write_json_atomic(out / "placement.json", roles.placement())
        trainer = None
        try:
            trainer = state["trainer"] = RLTrainer(cfg, tok, roles, train_rows, val_rows, tracker)
            result = trainer.fit(resume=resume)
            # colocated roles share a process: one figure per host process (split: the rollout pool's too)
            state["workers"] = {f"worker[{r}]": b for r, b in enumerate(roles.actor.peak_memory_bytes())}
            if roles.rollout is not roles.actor:
                state["workers"].update({f"rollout[{r}]": b for r, b in enumerate(roles.rollout.peak_memory_bytes())})
            return result
        finally:
            state["loop_s"] += trainer.loop_seconds if trainer is not None else 0.0
            roles.shutdown()

    def progress() -> tuple[int, int]:
        trainer = state["trainer"]
        latest = checkpoint_step(Path(cfg.trainer.output_dir) / "checkpoints")
        return (trainer.step if trainer is not None else 0), latest

    try:
        result, recovery = run_with_recovery(attempt, resume=cfg.trainer.resume, max_restarts=cfg.trainer.max_restarts,
                                             progress_of=progress)
    except (TrainingStopped, RunFailed) as err:
        trainer = state["trainer"]
        health = RunHealth(status="stopped" if isinstance(err, TrainingStopped) else "failed", message=str(err),
                           skipped_steps=trainer.guard.skipped_total if trainer else 0)
        _summarise(cfg, out, state["loop_s"], health, state["workers"])
        raise
    finally:
        tracker.close()
    health = RunHealth(restarts=recovery.restarts, lost_steps=recovery.lost_steps,
                       skipped_steps=result["skipped_steps"])
    return _summarise(cfg, out, state["loop_s"], health, state["workers"])


def _summarise(cfg: DictConfig, out: Path, wall_time_s: float, health: RunHealth,
               worker_bytes: dict[str, int]) -> dict:
    plot = plot_curves(out / "metrics.jsonl", out / "curves.png", ["reward/mean", "val/accuracy", "train/accuracy"])
    summary = RunSummary.from_metrics_jsonl(
        out / "metrics.jsonl", experiment_name=cfg.trainer.experiment_name, steps=cfg.trainer.total_steps,
        wall_time_s=wall_time_s, accuracy_key="val/accuracy", reward_key="reward/mean",
        peak_memory=PeakMemory(driver_bytes=process_peak_rss_bytes(), worker_bytes=worker_bytes),
        paths=OutputPaths(checkpoints=out / "checkpoints", metrics_jsonl=out / "metrics.jsonl",
                          tensorboard=out / "tensorboard", plot=plot), health=health)
    summary.write_json(out / "summary.json")
    print(summary.render_table())
    return summary.to_dict()


def sft(cfg: DictConfig) -> Path:
    """Warm start: fine-tune on the task's worked solutions; writes an HF checkpoint to sft.output_path."""
    task = get_task(cfg.task.name)
    resolve_shared_paths(cfg)
    target = Path(cfg.sft.output_path)
    base = cfg.sft.base_model_path
    scratch = target.parent / f".{target.name}-base"
    if base is None:
        t = cfg.model.tiny
        base = str(build_tiny_model(scratch, arch=t.arch, hidden_size=t.hidden_size, num_layers=t.num_layers,
                                    num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                                    intermediate_size=t.intermediate_size,
                                    max_position_embeddings=t.max_position_embeddings, seed=cfg.trainer.seed,
                                    tie_word_embeddings=t.tie_word_embeddings))
    tok = tokenizer_for("sft.base_model_path", base)
    train_files, _ = task_files(cfg)
    rows = load_rows(train_files, cfg, tok, extra_keys=(task.solution_key,))
    start_ray(cfg)
    c = cfg.cluster
    pool = ResourcePool(name="sft", nnodes=c.nnodes, devices_per_node=c.devices_per_node, use_gpu=c.use_gpu,
                        cpus_per_worker=c.cpus_per_worker, ready_timeout_s=c.init_timeout_s)
    from workers.roles.sft import SFTWorker

    group = spawn_colocated(pool, {"sft": (SFTWorker, {"cfg": cfg, "base_model_path": base})},
                            timeout_s=c.rpc_timeout_s, init_timeout_s=c.init_timeout_s)["sft"]
    stream = PromptStream(rows, cfg.sft.batch_size, cfg.trainer.seed, shuffle=True)
    tmp = target.parent / f".{target.name}.tmp"
    start = time.monotonic()
    try:
        bar = tqdm(range(cfg.sft.steps), desc="sft", mininterval=1.0, disable=None)
        for _ in bar:
            metrics = group.train_step(sft_batch(stream.next_rows(), task.solution_key, tok))
            bar.set_postfix(nll=f"{sum(m['nll'] for m in metrics) / len(metrics):.3f}")
        shutil.rmtree(tmp, ignore_errors=True)
        group.save(str(tmp))
    finally:
        group.shutdown()
        pool.release()
    tok.save_pretrained(tmp)
    warm_start.write_recipe(tmp, cfg)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"sft: {cfg.sft.steps} steps in {time.monotonic() - start:.0f}s -> {target}")
    return target


def ensure_warm_start(cfg: DictConfig) -> None:
    """The warm start at model.path: cached, else the shipped copy, else `baton sft` (same recipe either way)."""
    if warm_start.matches(Path(cfg.model.path), cfg):
        print(f"warm start: cached {cfg.model.path}")
    elif warm_start.install_shipped(cfg):
        print(f"warm start: shipped {warm_start.shipped_path(cfg)} -> {cfg.model.path}")
    else:
        print("warm start: no cached or shipped checkpoint for this recipe; running `baton sft` first")
        sft(cfg)


def run_default(cfg: DictConfig) -> dict:
    """`make run`: the warm start, then RL."""
    resolve_shared_paths(cfg)
    ensure_warm_start(cfg)
    return train(cfg)


def rebuild_shipped_warm_start(cfg: DictConfig) -> Path:
    """`make warm-start`: train the warm start with the configured recipe, then store it in the repo."""
    resolve_shared_paths(cfg)
    if not warm_start.matches(Path(cfg.model.path), cfg):
        sft(cfg)
    path = warm_start.ship(cfg)
    print(f"warm start stored in {path}; commit it with the recipe change")
    return path
