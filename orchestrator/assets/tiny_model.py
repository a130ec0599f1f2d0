"""Build a tiny random-init causal LM plus the char tokenizer as an ordinary HF model dir.

The point is that nothing downstream knows it is a toy: engines, rollout and
checkpointing load it with `AutoModelForCausalLM.from_pretrained(dir)` and
`orchestrator.tokenizer.load_tokenizer(dir)`, the same calls that load
`Qwen/Qwen2.5-0.5B-Instruct`, so CPU runs exercise the production code paths.
The architectures are the real HF `Qwen2ForCausalLM` / `LlamaForCausalLM`, so
vLLM and the FSDP2 engine see familiar module names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, Qwen2Config, Qwen2ForCausalLM

from orchestrator.assets.char_tokenizer import build_char_tokenizer

Arch = Literal["qwen2", "llama"]

_ARCHES: dict[str, tuple[type[PretrainedConfig], type[torch.nn.Module]]] = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


def tiny_model_config(
    *,
    arch: Arch,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    tie_word_embeddings: bool,
) -> PretrainedConfig:
    """The HF config for the tiny model; validated here so a bad shape fails before init."""
    if arch not in _ARCHES:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(_ARCHES)}")
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}")
    config_cls, _ = _ARCHES[arch]
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
        dtype="float32",
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Arch,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    seed: int,
    tie_word_embeddings: bool,
) -> Path:
    """Random-init a fp32 model sized to the char tokenizer and save model + tokenizer.

    Deterministic for a seed (the global torch RNG is left untouched). Returns `out_dir`.
    """
    tokenizer = build_char_tokenizer(model_max_length=max_position_embeddings)
    config = tiny_model_config(
        arch=arch,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
    _, model_cls = _ARCHES[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
