"""Translate the (already validated) config sections into the engines' frozen specs."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from workers.engines.base import TrainingEngine
from workers.engines.fsdp2.engine import FSDPEngine
from workers.engines.fsdp2.spec import FSDPEngineSpec, OptimSpec


def role_engine(cfg: DictConfig, device: torch.device, model_path: str, model_kind: str,
                optim: OptimSpec | None, *, megatron: DictConfig | None = None,
                max_tokens: int | None = None) -> TrainingEngine:
    """A role's training engine from the job config: trained when it gets an optimizer, frozen otherwise.

    Causal LMs (policy, reference) run on `trainer.backend`, with the role's `megatron` layout under
    backend=megatron; value and score heads (critic, reward model) always run on FSDP2.
    max_tokens: the role's `max_tokens_per_micro_batch` (FSDP2; validation refuses it under Megatron).
    """
    if cfg.trainer.backend == "megatron" and model_kind == "causal_lm" and megatron is not None:
        from workers.engines.megatron.engine import MegatronEngine
        from workers.engines.megatron.spec import MegatronEngineSpec

        spec = MegatronEngineSpec(model_path=model_path, model_kind=model_kind, compute_dtype=cfg.model.dtype,
                                  tensor_model_parallel_size=megatron.tensor_model_parallel_size,
                                  pipeline_model_parallel_size=megatron.pipeline_model_parallel_size,
                                  sequence_parallel=megatron.sequence_parallel,
                                  remove_padding=cfg.model.remove_padding)
        return MegatronEngine(spec, optim, device=device)
    spec = fsdp_spec(model_path, model_kind, cfg.model, seed=cfg.trainer.seed, trainable=optim is not None,
                     max_tokens=max_tokens)
    return FSDPEngine(spec, optim, device=device)


def fsdp_spec(model_path: str, model_kind: str, model_cfg: DictConfig, *, seed: int,
              trainable: bool, max_tokens: int | None = None) -> FSDPEngineSpec:
    """Master weights stay fp32 for trained roles; compute runs in model.dtype."""
    compute = model_cfg.dtype
    return FSDPEngineSpec(
        model_path=model_path,
        model_kind=model_kind,
        master_dtype="float32" if trainable else compute,
        param_dtype=compute,
        reduce_dtype="float32",
        reshard_after_forward=True,
        activation_checkpointing=bool(model_cfg.gradient_checkpointing) and trainable,
        cpu_offload=False,
        attn_implementation=str(model_cfg.attn_implementation),
        remove_padding=bool(model_cfg.remove_padding),
        share_prompts=bool(model_cfg.share_prompts),
        max_tokens_per_micro_batch=max_tokens,
        gather_once=bool(model_cfg.fsdp_gather_once),
        seed=seed,
    )


def optim_spec(optim: DictConfig, total_steps: int) -> OptimSpec:
    return OptimSpec(
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        grad_clip=optim.grad_clip,
        warmup_steps=min(optim.warmup_steps, total_steps),
        total_steps=total_steps,
        schedule=optim.schedule,
        min_lr_ratio=optim.min_lr_ratio,
    )


def actor_optimizer_steps(cfg: DictConfig) -> int:
    """Optimizer steps over the run: mini-batches per step x PPO epochs x RL steps."""
    per_step = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
    return cfg.trainer.total_steps * per_step * cfg.actor.ppo_epochs
