"""Varlen packing: a micro-batch's rows run as one sequence, each attending only to itself.

With `model.attn_implementation=varlen` a compacted micro-batch (workers/engines/compaction.py) is
flattened to [1, T], T = the attended tokens of all its rows: no padding cell is computed in the
matmuls or in attention. Each token keeps its own position id, and `cu_seq_lens` (row boundaries,
as flash-attention's varlen kernels take them) go to the attention function through the model's
kwargs, so every row attends to its own earlier tokens only. Outputs are scattered back to the
compacted [b, W] layout, so the readers of the compacted path (response columns, last token) are
reused unchanged; log-probs, values, scores and gradients equal the padded path's.

The attention kernel (`varlen_attention`, registered with transformers as "baton_varlen"):
- CUDA with fp16/bf16 and causal rows: torch's flash-attention varlen kernel (`torch.nn.attention.varlen`), one
  launch for the whole micro-batch; what veRL/OpenRLHF get from flash_attn's varlen functions.
- otherwise (CPU, or fp32 where flash has no kernel, or rows with their own masks): SDPA on each
  row's span, causal or under that row's mask; the same FLOPs, one call per row and layer.

Prompt sharing (workers/engines/prompt_sharing.py) packs its family rows the same way, each with its
own mask (a response sees the prompt and itself), so families are not padded to the longest one.
- a call without `cu_seq_lens_q` (padded rows, prompt sharing's 4-D mask, a plain HF call) runs
  transformers' SDPA path with the mask it was given, so a model built with this implementation is
  correct on every path (`varlen_mask` builds SDPA's mask from a 2-D padding mask, none for a packed call).

Why opt-in: on CPU, compaction with length-sorted micro-batches leaves little padding and runs SDPA
batched; `baton bench train --layouts` measures which is faster (BENCHMARKS.md). On GPU it is the
layout to use; the CUDA kernel call is exercised by `scripts/gpu_check.sh` on a lent GPU only.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workers.engines.compaction import Compacted

ATTENTION_NAME = "baton_varlen"


@dataclass(frozen=True)
class Packed:
    """A compacted micro-batch flattened to one row.

    inputs: input_ids / position_ids [1, T] plus the varlen kwargs (cu_seq_lens_q/k [b+1] int32,
        max_length_q/k); no attention mask.
    cells: [T] flat index (row * W + column) of each packed token in the compacted [b, W] layout.
    rows, width: b and W of the compacted layout.
    """

    inputs: dict[str, object]
    cells: Tensor
    rows: int
    width: int

    def unpack(self, values: Tensor) -> Tensor:
        """[1, T, ...] per-token outputs -> [b, W, ...], zero at padding cells (differentiable)."""
        return scatter_cells(values[0], self.cells, self.rows, self.width)

    def columns_from(self, first: int) -> tuple[Tensor, Tensor]:
        """(packed indices of the tokens at compacted column >= first, their cells in the [b, W - first]
        layout): what `logits_to_keep` keeps when only the columns [first, W) are projected."""
        column = self.cells % self.width
        keep = (column >= first).nonzero().squeeze(1)
        row = self.cells[keep] // self.width
        return keep, row * (self.width - first) + column[keep] - first


def scatter_cells(values: Tensor, cells: Tensor, rows: int, width: int) -> Tensor:
    """values [K, ...] placed at flat cells [K] of a zero [rows, width, ...] tensor (differentiable)."""
    flat = values.new_zeros((rows * width, *values.shape[1:])).index_copy(0, cells, values)
    return flat.view(rows, width, *values.shape[1:])


def pack(compacted: Compacted) -> Packed:
    """Every attended token of the compacted rows, row after row, with their boundaries."""
    inputs = compacted.inputs
    return pack_cells(inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"] > 0)


def pack_cells(input_ids: Tensor, position_ids: Tensor, valid: Tensor, masks: list[Tensor] | None = None) -> Packed:
    """The valid cells of [b, W] rows (a prefix of each row), row after row. masks: each row's own [len, len]
    boolean attention mask (True attends; prompt sharing's families) instead of plain causal attention."""
    rows, width = valid.shape
    cells = valid.reshape(-1).nonzero().squeeze(1)
    lengths = valid.sum(dim=1)
    cu = torch.zeros(rows + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, dim=0)
    longest = max(int(lengths.max()), 1)
    inputs: dict[str, object] = {
        "input_ids": input_ids.reshape(-1)[cells][None, :],
        "position_ids": position_ids.reshape(-1)[cells][None, :],
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
    }
    if masks is not None:
        inputs["varlen_masks"] = masks
    return Packed(inputs=inputs, cells=cells, rows=rows, width=width)


def varlen_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: object) -> tuple[Tensor, None]:
    """transformers attention function: query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if query.shape[0] != 1 or attention_mask is not None:
        raise ValueError("varlen attention takes one packed row and no attention mask (boundaries in cu_seq_lens_q)")
    if kwargs.get("sliding_window") is not None or dropout:
        raise ValueError("varlen attention: sliding-window layers and attention dropout are not supported")
    masks = kwargs.get("varlen_masks")
    if masks is None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        out = _flash_varlen(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                            cu, int(kwargs["max_length_q"]), scaling)  # [T, H, D]
        return out[None], None
    return _per_row_sdpa(query, key, value, cu.tolist(), scaling, masks), None


def _per_row_sdpa(query: Tensor, key: Tensor, value: Tensor, bounds: list[int], scaling: float | None,
                  masks: list[Tensor] | None = None) -> Tensor:
    """SDPA on each row's span of the packed sequence, causal or under the row's own mask: [1, T, H, D]."""
    gqa = query.shape[1] != key.shape[1]
    spans = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b > a:
            mask = None if masks is None else masks[i]
            spans.append(F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                        attn_mask=mask, is_causal=mask is None, scale=scaling,
                                                        enable_gqa=gqa))
    return torch.cat(spans, dim=2).transpose(1, 2).contiguous()


@functools.cache
def _parameters(fn: object) -> frozenset[str]:
    """The keyword names a torch version's varlen_attn takes (looked up once, not per layer call)."""
    return frozenset(inspect.signature(fn).parameters)


def _flash_varlen(query: Tensor, key: Tensor, value: Tensor, cu: Tensor, longest: int,
                  scaling: float | None) -> Tensor:
    """torch's flash varlen kernel on [T, H, D] tensors; kv heads repeated where it has no GQA flag."""
    from torch.nn.attention.varlen import varlen_attn

    params = _parameters(varlen_attn)
    extra: dict[str, object] = {"scale": scaling} if "scale" in params else {}
    if query.shape[1] != key.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            repeat = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    return varlen_attn(query, key, value, cu, cu, longest, longest, is_causal=True, **extra)


def varlen_mask(*, attention_mask: Tensor | None = None, **kwargs: object) -> Tensor | None:
    """transformers mask function: none for a packed call (no 2-D mask; cu_seq_lens bound the rows), SDPA's
    mask otherwise, so padded and compacted calls keep their padding mask."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make "baton_varlen" an attn_implementation transformers accepts (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, varlen_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, varlen_mask)
