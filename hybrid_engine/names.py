"""Parameter names: from what a wrapped training module reports to what HF checkpoints use.

Wrappers insert path components (`torch.compile` -> `_orig_mod`, activation checkpointing
-> `_checkpoint_wrapped_module`, FSDP1 -> `_fsdp_wrapped_module`); FSDP2 inserts none
because it swaps the module class in place. A rollout engine loads HF names, so the
components are stripped wherever they appear.

Tied weights: with `tie_word_embeddings=True`, `lm_head.weight` and
`model.embed_tokens.weight` are one Parameter (FSDP2 keeps the tie, since it dedups
parameters by identity). `named_parameters()` yields it once, under the first name it
was registered with (`model.embed_tokens.weight`). That is also exactly what
`save_pretrained` writes for tied models and what HF-name loaders expect (vLLM and the
built-in engine skip or accept-as-optional `lm_head.weight` when tied), so streams emit
each tensor once under that name; `tied_aliases` tells a consumer that needs the other
names which ones they are.
"""
from __future__ import annotations

import re

from torch import nn

WRAPPER_COMPONENTS: tuple[str, ...] = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")

_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks|layer)\.\d+)\.")
_EMBED_PARTS = ("embed_tokens", "wte", "wpe", "embeddings", "embed_in")
_HEAD_PREFIXES = ("lm_head", "embed_out", "output")
_FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_norm")


def hf_name(name: str) -> str:
    """Drop wrapper components (`a._orig_mod.b` -> `a.b`) from a dotted parameter name."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_COMPONENTS)


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """Map each extra name of a shared parameter to the name streams emit it under.

    For a tied HF causal LM this is `{"lm_head.weight": "model.embed_tokens.weight"}`.
    """
    first_name: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        canonical = first_name.setdefault(id(param), hf_name(name))
        if canonical != hf_name(name):
            aliases[hf_name(name)] = canonical
    return aliases


def param_group(name: str) -> str:
    """Coarse location of a parameter, for diagnosing a bad sync.

    `model.layers.N` (the decoder layer's own prefix), `embeddings`, `head` (lm_head and
    the final norm, which only feed the output projection), else `other`.
    """
    name = hf_name(name)
    layer = _LAYER.match(name)
    if layer:
        return layer.group(1)
    parts = name.split(".")
    if any(part in _EMBED_PARTS for part in parts):
        return "embeddings"
    if parts[0] in _HEAD_PREFIXES or (len(parts) >= 2 and parts[-2] in _FINAL_NORMS):
        return "head"
    return "other"
