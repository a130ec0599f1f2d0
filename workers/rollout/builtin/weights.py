"""Map HF parameter names onto the compact decoder's fused tensors and copy weights in.

Weights stream in buckets (any subset, any order, possibly several calls), so the map is
name -> (destination tensor, row range) and each tensor is copied straight into its
slice of a fused matrix; nothing is buffered. The set of names seen so far lets the
engine refuse to generate with weights that were never loaded.
"""
from __future__ import annotations

from typing import Iterable

import torch

from workers.rollout.builtin.model import CompactDecoder

# Buffers some checkpoints carry that the compact decoder recomputes itself.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

Target = tuple[str, int, int]  # (attribute path on the model, first row, end row); rows -1 means whole tensor


def _layer_targets(model: CompactDecoder, i: int) -> dict[str, Target]:
    s = model.spec
    hd, hq, hkv, inter = s.head_dim, s.num_heads, s.num_kv_heads, s.intermediate_size
    q_end, k_end, v_end = hq * hd, (hq + hkv) * hd, (hq + 2 * hkv) * hd
    pre, at = f"model.layers.{i}.", f"layers.{i}."
    out: dict[str, Target] = {
        pre + "input_layernorm.weight": (at + "input_norm", -1, -1),
        pre + "post_attention_layernorm.weight": (at + "post_norm", -1, -1),
        pre + "self_attn.q_proj.weight": (at + "qkv_w", 0, q_end),
        pre + "self_attn.k_proj.weight": (at + "qkv_w", q_end, k_end),
        pre + "self_attn.v_proj.weight": (at + "qkv_w", k_end, v_end),
        pre + "self_attn.o_proj.weight": (at + "o_w", -1, -1),
        pre + "mlp.gate_proj.weight": (at + "gate_up_w", 0, inter),
        pre + "mlp.up_proj.weight": (at + "gate_up_w", inter, 2 * inter),
        pre + "mlp.down_proj.weight": (at + "down_w", -1, -1),
    }
    if s.qkv_bias:
        out[pre + "self_attn.q_proj.bias"] = (at + "qkv_b", 0, q_end)
        out[pre + "self_attn.k_proj.bias"] = (at + "qkv_b", q_end, k_end)
        out[pre + "self_attn.v_proj.bias"] = (at + "qkv_b", k_end, v_end)
    if s.o_bias:
        out[pre + "self_attn.o_proj.bias"] = (at + "o_b", -1, -1)
    if s.mlp_bias:
        out[pre + "mlp.gate_proj.bias"] = (at + "gate_up_b", 0, inter)
        out[pre + "mlp.up_proj.bias"] = (at + "gate_up_b", inter, 2 * inter)
        out[pre + "mlp.down_proj.bias"] = (at + "down_b", -1, -1)
    return out


def weight_targets(model: CompactDecoder) -> dict[str, Target]:
    """Every HF name the model accepts. With tied embeddings `lm_head.weight` is accepted but optional."""
    out: dict[str, Target] = {
        "model.embed_tokens.weight": ("embed", -1, -1),
        "model.norm.weight": ("final_norm", -1, -1),
        "lm_head.weight": ("lm_head", -1, -1),
    }
    for i in range(model.spec.num_layers):
        out.update(_layer_targets(model, i))
    return out


def required_names(model: CompactDecoder) -> set[str]:
    """Names that must have been loaded at least once before generating."""
    names = set(weight_targets(model))
    if model.spec.tie_word_embeddings:
        names.discard("lm_head.weight")
    return names


class WeightLoader:
    """Copies (hf_name, tensor) pairs into a CompactDecoder; remembers which names it has seen."""

    def __init__(self, model: CompactDecoder) -> None:
        self.model = model
        self.targets = weight_targets(model)
        self.loaded: set[str] = set()

    def _destination(self, path: str, start: int, end: int) -> torch.Tensor:
        obj = self.model
        for part in path.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj.data if start < 0 else obj.data[start:end]

    @torch.no_grad()
    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy every known weight; raise KeyError naming all unknown names after the known ones are in."""
        unknown: list[str] = []
        count = 0
        for name, tensor in weights:
            target = self.targets.get(name)
            if target is None:
                if not name.endswith(IGNORED_SUFFIXES):
                    unknown.append(name)
                continue
            dest = self._destination(*target)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"builtin rollout: weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor, non_blocking=False)
            self.loaded.add(name)
            count += 1
        if unknown:
            raise KeyError(f"builtin rollout: unknown weight names for {self.model.spec.model_type}: {unknown}")
        return count

    def read(self, name: str) -> torch.Tensor:
        """The engine's current tensor for an HF name (a view into fused weights); KeyError if unknown."""
        return self._destination(*self.targets[name])

    def missing(self) -> list[str]:
        """Required names never loaded, sorted."""
        return sorted(required_names(self.model) - self.loaded)
