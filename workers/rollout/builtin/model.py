"""A compact inference-only Llama/Qwen2 decoder written for batched KV-cached decoding.

Not HF modules: projections are fused at load time (q|k|v into one matrix, gate|up
into another) and the decode step is a short straight line of torch ops with the
residual adds folded into addmm, because on small models every op's fixed cost shows.
Numerics follow the HF reference (fp32 RoPE tables cast to the model dtype, RMSNorm
in fp32, scale 1/sqrt(head_dim)) so log-probs match the training forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.rollout.builtin.kv_cache import KVCache
from workers.rollout.builtin.spec import DecoderSpec


def _param(*shape: int, dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


def _bias(enabled: bool, size: int, dtype: torch.dtype, device: torch.device | str) -> nn.Parameter | None:
    return _param(size, dtype=dtype, device=device) if enabled else None


class DecoderLayer(nn.Module):
    """One pre-norm block: fused qkv -> RoPE -> attention over the cache -> o_proj; fused gate_up MLP."""

    def __init__(self, spec: DecoderSpec, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        d, hd = spec.hidden_size, spec.head_dim
        qkv_out = (spec.num_heads + 2 * spec.num_kv_heads) * hd
        self.input_norm = _param(d, dtype=dtype, device=device)
        self.qkv_w = _param(qkv_out, d, dtype=dtype, device=device)
        self.qkv_b = _bias(spec.qkv_bias, qkv_out, dtype, device)
        self.o_w = _param(d, spec.num_heads * hd, dtype=dtype, device=device)
        self.o_b = _bias(spec.o_bias, d, dtype, device)
        self.post_norm = _param(d, dtype=dtype, device=device)
        self.gate_up_w = _param(2 * spec.intermediate_size, d, dtype=dtype, device=device)
        self.gate_up_b = _bias(spec.mlp_bias, 2 * spec.intermediate_size, dtype, device)
        self.down_w = _param(d, spec.intermediate_size, dtype=dtype, device=device)
        self.down_b = _bias(spec.mlp_bias, d, dtype, device)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF RMSNorm: normalise in fp32, cast back, then scale (the cast order matters for bf16)."""
    if x.dtype == torch.float32:
        return torch.rms_norm(x, weight.shape, weight, eps)
    return weight * torch.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin, with rotate_half folded into a roll and a sign-flipped sin table."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, on_cpu: bool
) -> torch.Tensor:
    """Attention of a few queries per (row, kv head) over the cache.

    `mask` [n, 1, 1, L] (None: no padding) is True on padding slots on CPU, where two
    batched matmuls and a softmax beat SDPA's flash kernel for these tiny per-head
    problems; elsewhere it is SDPA's attend-mask (True on valid slots) and SDPA picks a fused kernel.
    """
    if on_cpu:
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
        if mask is not None:
            scores.masked_fill_(mask, float("-inf"))
        probs = scores.softmax(dim=-1) if q.dtype == torch.float32 else scores.softmax(-1, dtype=torch.float32).to(v.dtype)
        return torch.matmul(probs, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _linear_residual(x: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x + inp @ weight.T (+ bias), as one addmm on 2-D inputs (one fewer op per call in the decode loop)."""
    if bias is None and inp.dim() == 2:
        return torch.addmm(x, inp, weight.t())
    return x + F.linear(inp, weight, bias)


class CompactDecoder(nn.Module):
    """Weights plus two entry points: `prefill` (whole left-padded prompts) and `decode` (one token per row)."""

    def __init__(self, spec: DecoderSpec, *, dtype: torch.dtype, device: torch.device | str, max_positions: int) -> None:
        super().__init__()
        self.spec = spec
        self.embed = _param(spec.vocab_size, spec.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(spec, dtype, device) for _ in range(spec.num_layers))
        self.final_norm = _param(spec.hidden_size, dtype=dtype, device=device)
        self.lm_head = self.embed if spec.tie_word_embeddings else _param(
            spec.vocab_size, spec.hidden_size, dtype=dtype, device=device
        )
        cos, sin = self._rope_tables(max_positions, device)
        self.register_buffer("rope_cos", cos.to(dtype), persistent=False)
        self.register_buffer("rope_sin", sin.to(dtype), persistent=False)

    def _rope_tables(self, max_positions: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.spec.head_dim
        inv_freq = 1.0 / (self.spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float().to(device) / hd))
        freqs = torch.arange(max_positions, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin_signed = torch.cat((-sin[:, : hd // 2], sin[:, hd // 2 :]), dim=-1)
        return emb.cos(), sin_signed

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for `positions` (any shape), with a trailing head axis for broadcasting."""
        return self.rope_cos[positions].unsqueeze(-2), self.rope_sin[positions].unsqueeze(-2)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(x, self.final_norm, self.spec.rms_norm_eps), self.lm_head)

    def _mlp(self, layer: DecoderLayer, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x, layer.post_norm, self.spec.rms_norm_eps)
        gate_up = F.linear(h, layer.gate_up_w, layer.gate_up_b)
        gate, up = gate_up.split(self.spec.intermediate_size, dim=-1)
        return _linear_residual(x, F.silu(gate).mul_(up), layer.down_w, layer.down_b)

    def prefill(
        self, input_ids: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor, cache: KVCache,
        first_row: int = 0,
    ) -> torch.Tensor:
        """Run left-padded prompts [n, P], fill cache slots [0, P) of rows [first_row, first_row + n); return
        last-token logits [n, V]. (first_row > 0: prompts joining a running batch, builtin/continuous.py.)"""
        s = self.spec
        rows = slice(first_row, first_row + input_ids.shape[0])
        n, p = input_ids.shape
        h_q, h_kv, hd = s.num_heads, s.num_kv_heads, s.head_dim
        causal = torch.ones(p, p, dtype=torch.bool, device=input_ids.device).tril()
        # Pad queries see only themselves so no row is fully masked (no NaN enters the cache).
        eye = torch.eye(p, dtype=torch.bool, device=input_ids.device)
        mask = ((causal & key_valid[:, None, :]) | eye).unsqueeze(1)
        cos, sin = self._rope(positions)
        x = F.embedding(input_ids, self.embed)
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer.input_norm, s.rms_norm_eps)
            qkv = F.linear(h, layer.qkv_w, layer.qkv_b).view(n, p, h_q + 2 * h_kv, hd)
            qk = apply_rope(qkv[:, :, : h_q + h_kv], cos, sin)
            q = qk[:, :, :h_q].transpose(1, 2)
            k = qk[:, :, h_q:].transpose(1, 2)
            v = qkv[:, :, h_q + h_kv :].transpose(1, 2)
            cache.keys[i][rows, :, :p] = k
            cache.values[i][rows, :, :p] = v
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=h_q != h_kv)
            x = x + F.linear(attn.transpose(1, 2).reshape(n, p, h_q * hd), layer.o_w, layer.o_b)
            x = self._mlp(layer, x)
        return self._logits(x[:, -1])

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int, cache: KVCache, use_mask: bool) -> torch.Tensor:
        """One token per row for rows [0, n): write K/V at `slot`, attend over slots [0, slot]; return logits [n, V].

        `use_mask`: some row has prompt padding, so attention reads `cache.key_valid` (False on padding).

        The G query heads sharing one KV head are folded into the query-length axis, so
        attention sees plain multi-head attention with no K/V expansion (GQA for free).
        """
        n = tokens.shape[0]
        key_valid = cache.key_valid[:n, None, None, : slot + 1] if use_mask else None
        mask = ~key_valid if tokens.device.type == "cpu" and key_valid is not None else key_valid
        return self._decode(tokens, positions, (slice(0, n), slice(None), slot), slot + 1, cache, mask)

    def decode_ragged(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                      cache: KVCache) -> torch.Tensor:
        """One token per row for rows [0, n) whose next cache slot differs per row (`slots` [n]): rows that joined
        at different times (continuous batching). A row attends over its valid slots up to its own."""
        n = tokens.shape[0]
        length = int(slots.max()) + 1
        span = torch.arange(length, device=tokens.device)
        key_valid = cache.key_valid[:n, :length] & (span[None, :] <= slots[:, None])
        mask = ~key_valid if tokens.device.type == "cpu" else key_valid
        rows = torch.arange(n, device=tokens.device)
        return self._decode(tokens, positions, (rows, slice(None), slots), length, cache, mask[:, None, None, :])

    def _decode(self, tokens: torch.Tensor, positions: torch.Tensor, write: tuple, length: int, cache: KVCache,
                mask: torch.Tensor | None) -> torch.Tensor:
        """The decode body: K/V of the new tokens go to cache index `write`, attention reads slots [0, length)."""
        s = self.spec
        n = tokens.shape[0]
        h_q, h_kv, hd = s.num_heads, s.num_kv_heads, s.head_dim
        split_qk_v, split_q_k = [h_q + h_kv, h_kv], [h_q, h_kv]
        q_shape = (n, h_kv, h_q // h_kv, hd)
        on_cpu = tokens.device.type == "cpu"
        cos, sin = self._rope(positions)
        x = F.embedding(tokens, self.embed)
        for layer, k_all, v_all in zip(self.layers, cache.keys, cache.values):
            h = rms_norm(x, layer.input_norm, s.rms_norm_eps)
            qk, v = F.linear(h, layer.qkv_w, layer.qkv_b).view(n, -1, hd).split(split_qk_v, dim=1)
            q, k = apply_rope(qk, cos, sin).split(split_q_k, dim=1)
            k_all[write] = k
            v_all[write] = v
            attn = decode_attention(q.view(q_shape), k_all[:n, :, :length], v_all[:n, :, :length], mask, on_cpu)
            x = _linear_residual(x, attn.reshape(n, -1), layer.o_w, layer.o_b)
            x = self._mlp(layer, x)
        return self._logits(x)
