"""Turn a HF Llama / Qwen2 config into the few numbers the compact decoder needs.

Validation lives here so that an unsupported checkpoint fails at construction with
the offending config field named, instead of generating plausible-looking garbage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


@dataclass(frozen=True)
class DecoderSpec:
    """Shape and numerics of a Llama-family decoder (Llama, Qwen2)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 always; Llama when attention_bias
    o_bias: bool  # Llama attention_bias only
    mlp_bias: bool  # Llama mlp_bias only


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _rope_theta(config: Any) -> float:
    """Read rope theta from `rope_parameters` (transformers 5.x) or `rope_theta`/`rope_scaling` (4.x)."""
    params = _get(config, "rope_parameters")
    if isinstance(params, Mapping) and params and "rope_type" not in params and "rope_theta" not in params:
        # Per-layer-type dict ({"full_attention": {...}, ...}): accept only when all agree.
        variants = {repr(sorted(v.items())) for v in params.values()}
        if len(variants) != 1:
            raise ValueError(f"builtin rollout: per-layer-type rope_parameters differ: {dict(params)}")
        params = next(iter(params.values()))
    if not params:
        params = _get(config, "rope_scaling") or {}
        field = "rope_scaling"
    else:
        field = "rope_parameters"
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise ValueError(f"builtin rollout: {field}.rope_type={rope_type!r} is not supported (only 'default' RoPE)")
    factor = params.get("partial_rotary_factor", 1.0)
    if factor not in (None, 1.0):
        raise ValueError(f"builtin rollout: {field}.partial_rotary_factor={factor} is not supported (only 1.0)")
    theta = params.get("rope_theta", _get(config, "rope_theta"))
    if theta is None:
        raise ValueError("builtin rollout: config has neither rope_parameters.rope_theta nor rope_theta")
    return float(theta)


def _check_no_sliding_window(config: Any) -> None:
    layer_types = _get(config, "layer_types")
    if layer_types is not None:
        bad = sorted({t for t in layer_types if t != "full_attention"})
        if bad:
            raise ValueError(
                f"builtin rollout: layer_types contains {bad} (sliding window active via use_sliding_window/"
                "sliding_window/max_window_layers); only full attention is supported"
            )
    elif _get(config, "use_sliding_window", False) and _get(config, "sliding_window") is not None:
        raise ValueError("builtin rollout: use_sliding_window=True is not supported (only full attention)")


def spec_from_hf_config(config: Any) -> DecoderSpec:
    """Build a DecoderSpec from a transformers config object or a config.json dict; raise on unsupported fields."""
    model_type = _get(config, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"builtin rollout: model_type={model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
    act = _get(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"builtin rollout: hidden_act={act!r} is not supported (only 'silu')")
    _check_no_sliding_window(config)
    hidden = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ValueError(f"builtin rollout: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    head_dim = int(_get(config, "head_dim") or hidden // heads)
    if head_dim % 2:
        raise ValueError(f"builtin rollout: head_dim={head_dim} must be even for RoPE")
    attention_bias = bool(_get(config, "attention_bias", False))
    is_qwen2 = model_type == "qwen2"
    return DecoderSpec(
        model_type=model_type,
        vocab_size=int(_get(config, "vocab_size")),
        hidden_size=hidden,
        num_layers=int(_get(config, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(_get(config, "intermediate_size")),
        rms_norm_eps=float(_get(config, "rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(config),
        tie_word_embeddings=bool(_get(config, "tie_word_embeddings", False)),
        qkv_bias=is_qwen2 or attention_bias,
        o_bias=(not is_qwen2) and attention_bias,
        mlp_bias=(not is_qwen2) and bool(_get(config, "mlp_bias", False)),
    )
