"""Config checks on how training forwards lay out their rows: token budgets, padding removal, prompt
sharing and varlen packing (workers/engines/). Registered into validate.CHECKS on import."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from orchestrator.config.errors import ConfigError
from orchestrator.config.validate import _one_of, check

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "varlen")


@check
def _token_budgets(cfg: DictConfig) -> None:
    """max_tokens_per_micro_batch: positive or null; a Megatron policy runs fixed row micro-batches."""
    keys = ("actor", "ref", "teacher", "critic", "reward.reward_model")  # the teacher always runs on FSDP2
    for key in keys:
        budget = OmegaConf.select(cfg, f"{key}.max_tokens_per_micro_batch")
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise ConfigError(f"{key}.max_tokens_per_micro_batch", f"must be a positive number of tokens or null, got {budget!r}")
    if cfg.trainer.backend == "megatron":
        for key in ("actor", "ref"):
            if cfg[key].max_tokens_per_micro_batch is not None:
                raise ConfigError(f"{key}.max_tokens_per_micro_batch", "token-budget micro-batches are FSDP2-only; "
                                  "backend=megatron runs actor.micro_batch_size rows per micro-batch: set it to null")


@check
def _packed_forwards(cfg: DictConfig) -> None:
    """Prompt sharing and varlen pack rows with their padding removed (workers/engines/prompt_sharing.py, varlen.py)."""
    padded = "to run padded rows set model.share_prompts=false model.attn_implementation=sdpa"
    if cfg.model.share_prompts and not cfg.model.remove_padding:
        raise ConfigError("model.share_prompts", f"packs rows with their padding removed: it needs "
                          f"model.remove_padding=true; {padded}")
    _one_of("model.attn_implementation", cfg.model.attn_implementation, ATTN_IMPLEMENTATIONS)
    if cfg.model.attn_implementation == "varlen" and not cfg.model.remove_padding:
        raise ConfigError("model.attn_implementation", f"varlen packs rows with their padding removed: it needs "
                          f"model.remove_padding=true; {padded}")
