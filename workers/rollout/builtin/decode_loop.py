"""Generate for one group of prompts that fits the KV cache: prefill once, fan out n samples, decode.

Finished rows stop costing compute: once enough of the active rows have finished
(`compact_fraction`), the survivors are gathered to the front of the cache and the
batch shrinks. Host syncs (needed to know how many rows finished) happen every
`sync_every` steps so that accelerators can run ahead of Python in between.

`interrupt`, asked between decode steps, ends the loop early (asynchronous RL: new weights arrived); the
result then says how many tokens every unfinished row has, so the engine can continue or restart them.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workers.rollout.builtin.cpu_kernels import FusedCpuDecoder
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
    interrupted_after: int | None = None  # interrupted: tokens every row in `unfinished` has (the rest is pad);
    unfinished: torch.Tensor | None = None  # ... rows (of this call) that had not ended. tokens are then raw


def _trim_left_padding(input_ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row; they would only cost attention work."""
    cols = valid.any(dim=0).nonzero()
    if cols.numel() == 0:
        raise ValueError("builtin rollout: every prompt is empty (attention_mask all zero)")
    first = int(cols[0])
    return input_ids[:, first:], valid[:, first:]


def run_group(
    model: CompactDecoder | FusedCpuDecoder,
    cache: KVCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: LoopConfig,
    generator: torch.Generator | None,
    interrupt: Callable[[], bool] | None = None,
) -> GroupResult:
    """input_ids/attention_mask [b, P] left-padded on the engine device; b * n <= cache rows.

    interrupt: asked before each decode step; True ends the call there (see GroupResult.interrupted_after).
    """
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

    logits = model.prefill(input_ids, positions, valid, cache)  # prefill masks padding itself
    if n > 1:
        fan_out = torch.arange(b, device=device).repeat_interleave(n)
        cache.gather_rows(fan_out, p)
        logits = logits.index_select(0, fan_out)
    cache.reset_key_valid(valid.repeat_interleave(n, dim=0) if n > 1 else valid)
    use_mask = not bool(valid.all())

    rows = torch.arange(total, device=device)
    pos = prompt_len.repeat_interleave(n) if n > 1 else prompt_len.clone()
    done = torch.zeros(total, dtype=torch.bool, device=device)
    stops = StopRule(cfg, device)
    run = stops.new_run(total)
    segments: list[_Segment] = [_Segment(rows, 0)]
    step_rows: list[int] = []

    for step in range(r):
        tok, logp = sample_next(logits, cfg.sampler, generator)
        segments[-1].append(tok, logp)
        if step == r - 1:
            break
        ended, run = stops.step(tok, logp, run)
        if ended is not None:  # None: nothing can end a row early, so no bookkeeping and no host syncs
            done.logical_or_(ended)
            if step % cfg.sync_every == 0:
                n_done, n_active = int(done.sum()), done.shape[0]
                if n_done == n_active:
                    break
                if n_done and n_done >= cfg.compact_fraction * n_active:
                    keep = (~done).nonzero().squeeze(1)
                    cache.gather_rows(keep, p + step)
                    rows, pos, tok, done = rows[keep], pos[keep], tok[keep], done[keep]
                    run = run[keep] if run is not None else None
                    segments.append(_Segment(rows, step + 1))
        if interrupt is not None and interrupt():
            tokens, log_probs = _scatter(segments, total, cfg, device)
            return GroupResult(tokens=tokens, log_probs=log_probs, lengths=torch.full((total,), step + 1),
                               step_rows=step_rows, interrupted_after=step + 1, unfinished=rows[~done])
        slot = p + step  # slots [0, slot) hold the prompt and the tokens decoded so far
        step_rows.append(tok.shape[0])
        logits = model.decode(tok, pos, slot, cache, use_mask)
        pos += 1

    tokens, log_probs = _scatter(segments, total, cfg, device)
    return finish(tokens, log_probs, cfg, step_rows)


def _scatter(segments: list["_Segment"], total: int, cfg: LoopConfig,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.full((total, cfg.max_new_tokens), cfg.pad_token_id, dtype=torch.long, device=device)
    log_probs = torch.zeros(total, cfg.max_new_tokens, dtype=torch.float32, device=device)
    for seg in segments:
        seg.scatter(tokens, log_probs)
    return tokens, log_probs


def finish(tokens: torch.Tensor, log_probs: torch.Tensor, cfg: LoopConfig, step_rows: list[int]) -> GroupResult:
    """Lengths, stop counts and masking of whole [N, R] responses (one call's, or several calls' joined)."""
    device = tokens.device
    stops = StopRule(cfg, device)
    r = tokens.shape[1]
    lengths, stop_token_stops, repetition_stops = stops.lengths(tokens, log_probs)
    response_mask = torch.arange(r, device=device)[None, :] < lengths[:, None]
    return GroupResult(
        tokens=tokens.masked_fill_(~response_mask, cfg.pad_token_id),
        log_probs=log_probs.masked_fill_(~response_mask, 0.0),
        lengths=lengths,
        stop_token_stops=stop_token_stops,
        repetition_stops=repetition_stops,
        step_rows=step_rows,
    )


class _Segment:
    """Tokens sampled for a fixed set of rows over consecutive steps; written out once at the end."""

    def __init__(self, rows: torch.Tensor, first_step: int) -> None:
        self.rows, self.first_step = rows, first_step
        self.tokens: list[torch.Tensor] = []
        self.log_probs: list[torch.Tensor] = []

    def append(self, tokens: torch.Tensor, log_probs: torch.Tensor) -> None:
        self.tokens.append(tokens)
        self.log_probs.append(log_probs)

    def scatter(self, tokens: torch.Tensor, log_probs: torch.Tensor) -> None:
        if self.tokens:
            cols = slice(self.first_step, self.first_step + len(self.tokens))
            tokens[self.rows, cols] = torch.stack(self.tokens, dim=1)
            log_probs[self.rows, cols] = torch.stack(self.log_probs, dim=1)


class StopRule:
    """When a row ends: a stop token (kept in the response) or, MiniMax-M1 style, K tokens in a row each
    sampled with probability > p. Evaluated per step (to stop compute) and once over the finished
    [N, R] arrays (for lengths and counts), with the same float comparisons so both agree."""

    def __init__(self, cfg: LoopConfig, device: torch.device) -> None:
        self.device = device
        self.stop_ids = torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=device) if cfg.stop_token_ids else None
        prob = cfg.repetition_stop_prob
        self.window = cfg.repetition_stop_window if prob < 1.0 else 0
        self.log_p_min = math.log(prob) if prob > 0.0 else float("-inf")  # prob <= 0: every token counts

    def new_run(self, rows: int) -> torch.Tensor | None:
        return torch.zeros(rows, dtype=torch.int32, device=self.device) if self.window > 0 else None

    def step(
        self, tokens: torch.Tensor, log_probs: torch.Tensor, run: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(rows that end at this token or None if no rule is active, updated high-probability run lengths)."""
        ended = torch.isin(tokens, self.stop_ids) if self.stop_ids is not None else None
        if run is not None:
            run = torch.where(log_probs > self.log_p_min, run + 1, 0)
            repeated = run >= self.window
            ended = repeated if ended is None else ended | repeated
        return ended, run

    def lengths(self, tokens: torch.Tensor, log_probs: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Response lengths [N] (first end inclusive, else R) and how many rows ended by each rule."""
        n, r = tokens.shape
        by_stop = torch.isin(tokens, self.stop_ids) if self.stop_ids is not None else torch.zeros_like(tokens, dtype=torch.bool)
        ended = by_stop
        if self.window > 0:
            high = torch.cumsum((log_probs > self.log_p_min).int(), dim=1)
            before = torch.nn.functional.pad(high, (self.window, 0))[:, :r]
            ended = ended | (high - before >= self.window)
        any_end = ended.any(dim=1)
        first = ended.int().argmax(dim=1)  # index of the first end
        lengths = torch.where(any_end, first + 1, r)
        stop_rows = any_end & by_stop.gather(1, first[:, None]).squeeze(1)
        n_stop = int(stop_rows.sum())
        return lengths, n_stop, int(any_end.sum()) - n_stop
