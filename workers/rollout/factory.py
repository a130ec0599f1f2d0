"""Pick the rollout engine named by `rollout.name`; both implement workers.rollout.base.RolloutEngine."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from workers.rollout.base import RolloutEngine


def build_rollout(rollout_cfg: DictConfig, model_path: str, *, device: torch.device, max_seq_len: int,
                  pad_token_id: int, seed: int) -> RolloutEngine:
    if rollout_cfg.name == "builtin":
        from workers.rollout.builtin.engine import BuiltinRolloutEngine

        return BuiltinRolloutEngine.from_pretrained(
            model_path, dtype=rollout_cfg.dtype, device=device, max_batch_size=rollout_cfg.max_batch_size,
            max_seq_len=max_seq_len, pad_token_id=pad_token_id, kernels=rollout_cfg.kernels,
            sleep_level=rollout_cfg.sleep_level)
    if rollout_cfg.name == "vllm":
        from workers.rollout.vllm_engine import VLLMRolloutEngine

        v = rollout_cfg.vllm
        return VLLMRolloutEngine(
            model_path, dtype=rollout_cfg.dtype, max_model_len=max_seq_len, kv_cache_bytes=v.kv_cache_bytes,
            gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager, seed=seed,
            pad_token_id=pad_token_id, sleep_level=rollout_cfg.sleep_level, tensor_parallel_size=1,
            max_num_seqs=rollout_cfg.max_batch_size)
    raise ValueError(f"rollout.name: unknown engine '{rollout_cfg.name}' (builtin | vllm)")
