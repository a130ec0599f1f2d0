"""Generate for one group of prompts that fits the KV cache: prefill once, fan out n samples, decode.

Finished rows stop costing compute: once enough of the active rows have finished
(`compact_fraction`), the survivors are gathered to the front of the cache and the
batch shrinks. Host syncs (needed to know how many rows finished) happen every
`sync_every` steps so that accelerators can run ahead of Python in between.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from workers.rollout.builtin.kv_cache import KVCache
from workers.rollout.builtin.model import CompactDecoder
from workers.rollout.builtin.sampling import SamplerConfig, sample_next


@dataclass(frozen=True)
class LoopConfig:
    """Per-call decoding settings, already validated by the engine."""

    sampler: SamplerConfig
    n: int
    max_new_tokens: int
    stop_token_ids: tuple[int, ...]
    repetition_stop_window: int
    repetition_stop_prob: float
    pad_token_id: int
    compact_fraction: float
    sync_every: int


@dataclass
class GroupResult:
    """Right-padded responses of one group (rows interleaved by sample), plus stop counters."""

    tokens: torch.Tensor  # [N, R] int64, pad after the end
    log_probs: torch.Tensor  # [N, R] float32, 0 after the end
    lengths: torch.Tensor  # [N] int64
    stop_token_stops: int = 0
    repetition_stops: int = 0
    step_rows: list[int] = field(default_factory=list)  # rows fed to each decode step (compaction shows here)


def _trim_left_padding(input_ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row; they would only cost attention work."""
    cols = valid.any(dim=0).nonzero()
    if cols.numel() == 0:
        raise ValueError("builtin rollout: every prompt is empty (attention_mask all zero)")
    first = int(cols[0])
    return input_ids[:, first:], valid[:, first:]


def run_group(
    model: CompactDecoder,
    cache: KVCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: LoopConfig,
    generator: torch.Generator | None,
) -> GroupResult:
    """input_ids/attention_mask [b, P] left-padded on the engine device; b * n <= cache rows."""
    device = input_ids.device
    valid = attention_mask.bool()
    if not bool(valid[:, -1].all()):
        raise ValueError("builtin rollout: prompts must be left-padded (attention_mask[:, -1] must be 1 on every row)")
    input_ids, valid = _trim_left_padding(input_ids, valid)
    b, p = input_ids.shape
    n, r = cfg.n, cfg.max_new_tokens
    total = b * n
    prompt_len = valid.sum(dim=-1)
    positions = (valid.cumsum(dim=-1) - 1).clamp(min=0)

    cache.reset_key_valid(valid.repeat_interleave(n, dim=0) if n > 1 else valid)
    logits = model.prefill(input_ids, positions, valid, cache)
    if n > 1:
        fan_out = torch.arange(b, device=device).repeat_interleave(n)
        cache.gather_rows(fan_out, p)
        # gather_rows also re-gathered the (already fanned-out) padding mask: set it back to the fanned-out one
        cache.reset_key_valid(valid.repeat_interleave(n, dim=0))
        logits = logits.index_select(0, fan_out)
    use_mask = not bool(valid.all())

    out_tok = torch.full((total, r), cfg.pad_token_id, dtype=torch.long, device=device)
    out_logp = torch.zeros(total, r, dtype=torch.float32, device=device)
    lengths = torch.full((total,), r, dtype=torch.long, device=device)
    rows = torch.arange(total, device=device)
    pos = prompt_len.repeat_interleave(n) if n > 1 else prompt_len.clone()
    done = torch.zeros(total, dtype=torch.bool, device=device)
    stop_ids = torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=device) if cfg.stop_token_ids else None
    window = cfg.repetition_stop_window
    prob = cfg.repetition_stop_prob
    log_p_min = math.log(prob) if 0.0 < prob < 1.0 else float("-inf")  # prob <= 0: every token counts
    run = torch.zeros(total, dtype=torch.int32, device=device) if window > 0 and prob < 1.0 else None
    stop_hits = torch.zeros((), dtype=torch.long, device=device)
    rep_hits = torch.zeros((), dtype=torch.long, device=device)
    step_rows: list[int] = []

    for step in range(r):
        tok, logp = sample_next(logits, cfg.sampler, generator)
        out_tok[rows, step] = tok
        out_logp[rows, step] = logp
        live = ~done
        ended = live & torch.isin(tok, stop_ids) if stop_ids is not None else torch.zeros_like(done)
        stop_hits += ended.sum()
        if run is not None:
            run = torch.where(logp > log_p_min, run + 1, 0)
            repeated = live & ~ended & (run >= window)
            rep_hits += repeated.sum()
            ended = ended | repeated
        lengths[rows] = torch.where(ended, step + 1, lengths[rows])
        done = done | ended
        if step == r - 1:
            break
        slot = p + step  # slots [0, slot) hold the prompt and the tokens decoded so far
        if step % cfg.sync_every == 0:
            n_done, n_active = int(done.sum()), done.shape[0]
            if n_done == n_active:
                break
            if n_done and n_done >= cfg.compact_fraction * n_active:
                keep = (~done).nonzero().squeeze(1)
                cache.gather_rows(keep, slot)
                rows, pos, tok, done = rows[keep], pos[keep], tok[keep], done[keep]
                run = run[keep] if run is not None else None
        n_active = done.shape[0]
        step_rows.append(n_active)
        mask = cache.key_valid[:n_active, None, None, : slot + 1] if use_mask else None
        logits = model.decode(tok, pos, slot, cache, mask)
        pos += 1

    response_mask = torch.arange(r, device=device)[None, :] < lengths[:, None]
    return GroupResult(
        tokens=out_tok.masked_fill_(~response_mask, cfg.pad_token_id),
        log_probs=out_logp.masked_fill_(~response_mask, 0.0),
        lengths=lengths,
        stop_token_stops=int(stop_hits),
        repetition_stops=int(rep_hits),
        step_rows=step_rows,
    )
