"""HF <-> Megatron-core weights for Llama/Qwen2-style decoders, and how each tensor is split over tensor parallelism.

Pure tensor code, no process groups: the engine gathers or scatters, this module decides
what goes where. Megatron's local (non-TransformerEngine) layer spec names:

    embedding.word_embeddings.weight                 <- model.embed_tokens.weight       (vocab rows split)
    decoder.layers.J.input_layernorm.weight          <- model.layers.I.input_layernorm.weight
    decoder.layers.J.self_attention.linear_qkv.weight/.bias  <- q_proj, k_proj, v_proj   (fused, see below)
    decoder.layers.J.self_attention.linear_proj.weight       <- o_proj                   (input dim split)
    decoder.layers.J.pre_mlp_layernorm.weight        <- post_attention_layernorm
    decoder.layers.J.mlp.linear_fc1.weight           <- gate_proj, up_proj              (fused, see below)
    decoder.layers.J.mlp.linear_fc2.weight           <- down_proj                       (input dim split)
    decoder.final_layernorm.weight                   <- model.norm.weight
    output_layer.weight                              <- lm_head.weight (untied models)   (vocab rows split)

J is the layer's index within its pipeline stage, I = stage offset + J.

Fused QKV: Megatron orders the rows by query group (GQA): for each KV head g, the query heads
of that group, then k_g, then v_g. Splitting those rows into TP chunks keeps whole groups on
a rank, which is why heads and KV heads must both divide by the TP size.
Fused fc1: [gate; up]; over TP each rank holds [its gate rows; its up rows], so the halves are
split separately.

The vocabulary is padded to a multiple of the TP size (padding rows are zero, never loaded
back into HF and masked out of every softmax by the engine).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DecoderShape:
    """What the conversion needs of an HF config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied: bool
    qkv_bias: bool

    def padded_vocab(self, tp: int) -> int:
        return -(-self.vocab_size // tp) * tp


# How a Megatron tensor is cut over TP ranks: "rows" (dim 0), "cols" (dim 1), "fc1" (gate and up halves
# each by rows) or "replicated".
SPLIT_ROWS, SPLIT_COLS, SPLIT_FC1, REPLICATED = "rows", "cols", "fc1", "replicated"

_LAYER_PARTS = {
    "input_layernorm.weight": REPLICATED,
    "self_attention.linear_qkv.weight": SPLIT_ROWS,
    "self_attention.linear_qkv.bias": SPLIT_ROWS,
    "self_attention.linear_proj.weight": SPLIT_COLS,
    "pre_mlp_layernorm.weight": REPLICATED,
    "mlp.linear_fc1.weight": SPLIT_FC1,
    "mlp.linear_fc2.weight": SPLIT_COLS,
}


def split_kind(megatron_name: str) -> str:
    if megatron_name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return SPLIT_ROWS
    if megatron_name == "decoder.final_layernorm.weight":
        return REPLICATED
    part = megatron_name.split(".", 3)[3]  # decoder.layers.J.<part>
    return _LAYER_PARTS[part]


def shard(full: Tensor, kind: str, tp_rank: int, tp_size: int) -> Tensor:
    """This TP rank's piece of a full Megatron tensor."""
    if kind == REPLICATED or tp_size == 1:
        return full.clone()
    if kind == SPLIT_ROWS:
        return full.chunk(tp_size, dim=0)[tp_rank].clone()
    if kind == SPLIT_COLS:
        return full.chunk(tp_size, dim=1)[tp_rank].clone()
    gate, up = full.chunk(2, dim=0)
    return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)


def unshard(pieces: list[Tensor], kind: str) -> Tensor:
    """The full Megatron tensor from every TP rank's piece, in rank order (inverse of `shard`)."""
    if kind == REPLICATED or len(pieces) == 1:
        return pieces[0]
    if kind == SPLIT_ROWS:
        return torch.cat(pieces, dim=0)
    if kind == SPLIT_COLS:
        return torch.cat(pieces, dim=1)
    halves = [p.chunk(2, dim=0) for p in pieces]
    return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])], dim=0)


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, shape: DecoderShape) -> Tensor:
    """[q; k; v] rows (weights or biases) regrouped per KV head as Megatron's linear_qkv holds them."""
    groups, per_group, d = shape.num_kv_heads, shape.num_heads // shape.num_kv_heads, shape.head_dim
    tail = q.shape[1:]
    parts = [q.reshape(groups, per_group * d, *tail), k.reshape(groups, d, *tail), v.reshape(groups, d, *tail)]
    return torch.cat(parts, dim=1).reshape(-1, *tail)


def split_qkv(fused: Tensor, shape: DecoderShape) -> tuple[Tensor, Tensor, Tensor]:
    groups, per_group, d = shape.num_kv_heads, shape.num_heads // shape.num_kv_heads, shape.head_dim
    tail = fused.shape[1:]
    grouped = fused.reshape(groups, (per_group + 2) * d, *tail)
    q, k, v = grouped.split([per_group * d, d, d], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])], dim=0)


def layer_map(i: int, j: int) -> dict[str, str]:
    """HF name -> Megatron name for the 1:1 tensors of HF layer i (stage-local index j)."""
    hf, mg = f"model.layers.{i}.", f"decoder.layers.{j}."
    return {hf + "input_layernorm.weight": mg + "input_layernorm.weight",
            hf + "self_attn.o_proj.weight": mg + "self_attention.linear_proj.weight",
            hf + "post_attention_layernorm.weight": mg + "pre_mlp_layernorm.weight",
            hf + "mlp.down_proj.weight": mg + "mlp.linear_fc2.weight"}


def hf_to_megatron(hf: dict[str, Tensor], shape: DecoderShape, layers: range, *, first: bool, last: bool,
                   tp: int) -> dict[str, Tensor]:
    """Full (unsharded) Megatron tensors of one pipeline stage: HF layers `layers`, plus the embedding on
    the first stage and the final norm and output layer on the last."""
    out: dict[str, Tensor] = {}
    vocab = shape.padded_vocab(tp)
    if first:
        out["embedding.word_embeddings.weight"] = _pad_rows(hf["model.embed_tokens.weight"], vocab)
    for j, i in enumerate(layers):
        for hf_name, mg_name in layer_map(i, j).items():
            out[mg_name] = hf[hf_name]
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        out[f"decoder.layers.{j}.self_attention.linear_qkv.weight"] = fuse_qkv(
            hf[a + "q_proj.weight"], hf[a + "k_proj.weight"], hf[a + "v_proj.weight"], shape)
        if shape.qkv_bias:
            out[f"decoder.layers.{j}.self_attention.linear_qkv.bias"] = fuse_qkv(
                hf[a + "q_proj.bias"], hf[a + "k_proj.bias"], hf[a + "v_proj.bias"], shape)
        out[f"decoder.layers.{j}.mlp.linear_fc1.weight"] = torch.cat([hf[m + "gate_proj.weight"],
                                                                       hf[m + "up_proj.weight"]], dim=0)
    if last:
        out["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
        head = hf["model.embed_tokens.weight"] if shape.tied else hf["lm_head.weight"]
        out["output_layer.weight"] = _pad_rows(head, vocab)
    return out


def megatron_to_hf(mg: dict[str, Tensor], shape: DecoderShape, layers: range, *, first: bool,
                   last: bool) -> dict[str, Tensor]:
    """Inverse of `hf_to_megatron` for one stage's full tensors (vocab padding dropped, tied head left out)."""
    out: dict[str, Tensor] = {}
    if first:
        out["model.embed_tokens.weight"] = mg["embedding.word_embeddings.weight"][: shape.vocab_size]
    for j, i in enumerate(layers):
        for hf_name, mg_name in layer_map(i, j).items():
            out[hf_name] = mg[mg_name]
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        q, k, v = split_qkv(mg[f"decoder.layers.{j}.self_attention.linear_qkv.weight"], shape)
        out.update({a + "q_proj.weight": q, a + "k_proj.weight": k, a + "v_proj.weight": v})
        if shape.qkv_bias:
            q, k, v = split_qkv(mg[f"decoder.layers.{j}.self_attention.linear_qkv.bias"], shape)
            out.update({a + "q_proj.bias": q, a + "k_proj.bias": k, a + "v_proj.bias": v})
        gate, up = mg[f"decoder.layers.{j}.mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({m + "gate_proj.weight": gate, m + "up_proj.weight": up})
    if last:
        out["model.norm.weight"] = mg["decoder.final_layernorm.weight"]
        if not shape.tied:
            out["lm_head.weight"] = mg["output_layer.weight"][: shape.vocab_size]
    return out
