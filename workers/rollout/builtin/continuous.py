"""Continuous batching for the built-in engine: prompts join the running batch as others finish.

Rows live in the prefix [0, n) of the KV cache, as in the one-call decode loop, but each row has its own next
cache slot and position (rows that joined later are shorter), so decoding uses `CompactDecoder.decode_ragged`.
Each `step` samples one token for every running row; a group (one prompt's n samples) is returned as soon as
its last sample ends. Finished rows stay in the batch, ignored, until they are a `compact_fraction` of it or
their rows are needed; then the survivors are gathered to the front and waiting prompts are prefilled into
the freed rows (left-padded among themselves, fanned out to n rows after one prefill).

New weights (asynchronous RL) are taken at the start of a step; every running sample is re-prefilled under
them: `continue` as prompt + its tokens so far, `restart` from its prompt alone. Its recorded log-probs and
versions therefore always come from the weights that sampled each token, as in builtin/partial.py.

Sampling draws from one generator seeded by the stream's params.seed, so a stream is deterministic for a
fixed order of requests and steps; request seeds are not used here.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from workers.rollout.builtin.decode_loop import LoopConfig, StopRule
from workers.rollout.builtin.kv_cache import KVCache
from workers.rollout.builtin.model import CompactDecoder
from workers.rollout.builtin.sampling import sample_next
from workers.rollout.streaming import FinishedGroup, GroupRequest
from workers.rollout.weight_updates import WeightUpdates


@dataclass
class _Request:
    request: GroupRequest
    samples: list[tuple[list[int], list[float], list[int], str] | None]  # per sample: tokens, lps, versions, end
    open_rows: int  # samples not yet ended


@dataclass
class _Sequence:
    """What an admission prefills: ids (prompt + tokens kept), owners of the rows it fans out to."""

    ids: list[int]
    prompt_len: int
    owners: list[tuple[_Request, int]]
    kept: int = 0  # tokens already sampled (continue after an update)
    buffers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class ContinuousBatcher:
    """The built-in engine's RequestStream (workers/rollout/streaming.py)."""

    def __init__(self, model: CompactDecoder, cache: KVCache, cfg: LoopConfig, generator: torch.Generator,
                 updates: WeightUpdates | None) -> None:
        self.model, self.cache, self.cfg, self.generator, self.updates = model, cache, cfg, generator, updates
        self.device = cache.device
        self.stops = StopRule(cfg, self.device)
        self.waiting: deque[_Request] = deque()
        self.owners: list[tuple[_Request, int] | None] = []  # per row; None once the row has ended
        r = cfg.max_new_tokens
        self.tokens = torch.zeros(0, r, dtype=torch.long, device=self.device)
        self.log_probs = torch.zeros(0, r, dtype=torch.float32, device=self.device)
        self.versions = torch.zeros(0, r, dtype=torch.long, device=self.device)
        self.generated = torch.zeros(0, dtype=torch.long, device=self.device)  # tokens per row so far
        self.slot = torch.zeros(0, dtype=torch.long, device=self.device)  # next cache slot per row
        self.pos = torch.zeros(0, dtype=torch.long, device=self.device)  # next position per row
        self.run = self.stops.new_run(0)
        self.logits: torch.Tensor | None = None  # next-token logits per row
        self.admitted_while_running = 0  # prompts that joined while other rows were decoding
        self.interrupted = 0  # running samples re-prefilled because new weights arrived
        self.open_requests = 0  # added and not yet returned (waiting or running)

    # --- the RequestStream calls -------------------------------------------------------------

    def add(self, requests: list[GroupRequest]) -> None:
        limit = self.cache.max_len - self.cfg.max_new_tokens
        for req in requests:
            if not req.prompt or len(req.prompt) > limit:
                raise ValueError(f"builtin rollout: request {req.request_id!r} has a prompt of {len(req.prompt)} "
                                 f"tokens; it must have 1..{limit} (max_seq_len - max_new_tokens)")
            self.waiting.append(_Request(req, [None] * self.cfg.n, self.cfg.n))
            self.open_requests += 1

    def pending(self) -> int:
        return self.open_requests

    def end_stream(self) -> list[str]:
        running = {id(o[0]): o[0].request.request_id for o in self.owners if o is not None}
        dropped = [r.request.request_id for r in self.waiting] + list(running.values())
        self.waiting.clear()
        self._keep(torch.zeros(0, dtype=torch.long, device=self.device))
        self.open_requests = 0
        return dropped

    @torch.inference_mode()
    def step(self) -> list[FinishedGroup]:
        if self.updates is not None and self.updates.ready():
            self._take_update()
        self._admit()
        if not self.owners:
            return []
        tok, logp = sample_next(self.logits, self.cfg.sampler, self.generator)
        rows = torch.arange(len(self.owners), device=self.device)
        col = self.generated.clamp(max=self.cfg.max_new_tokens - 1)
        self.tokens[rows, col], self.log_probs[rows, col] = tok, logp
        self.versions[rows, col] = self.updates.version if self.updates is not None else 0
        self.generated += 1
        ended, self.run = self.stops.step(tok, logp, self.run)
        ended = self.generated >= self.cfg.max_new_tokens if ended is None else ended | (
            self.generated >= self.cfg.max_new_tokens)
        finished = self._finish_rows(ended)
        live = torch.tensor([o is not None for o in self.owners], dtype=torch.bool, device=self.device)
        dead = len(self.owners) - int(live.sum())
        if dead and (dead >= self.cfg.compact_fraction * len(self.owners) or self._room_needed()):
            keep = live.nonzero().squeeze(1)
            self._keep(keep)
            tok = tok[keep]
        if self.owners:
            self.logits = self.model.decode_ragged(tok, self.pos, self.slot, self.cache)
            # an ended row waiting for compaction must not run past the cache (its writes are ignored)
            self.slot.add_(1).clamp_(max=self.cache.max_len - 1)
            self.pos.add_(1).clamp_(max=self.cache.max_len - 1)
        return finished

    # --- rows ------------------------------------------------------------------------------

    def _finish_rows(self, ended: torch.Tensor) -> list[FinishedGroup]:
        out = []
        for row in ended.nonzero().squeeze(1).tolist():
            owner = self.owners[row]
            if owner is None:
                continue
            self.owners[row] = None
            req, j = owner
            length = int(self.generated[row])
            toks = self.tokens[row, :length].tolist()
            end = "stop_token" if self.stops.stop_ids is not None and toks[-1] in self.cfg.stop_token_ids else (
                "length" if length >= self.cfg.max_new_tokens else "repetition")
            req.samples[j] = (toks, self.log_probs[row, :length].tolist(), self.versions[row, :length].tolist(), end)
            req.open_rows -= 1
            if req.open_rows == 0:
                self.open_requests -= 1
                ends = [s[3] for s in req.samples]
                out.append(FinishedGroup(req.request.request_id, [s[0] for s in req.samples],
                                         [s[1] for s in req.samples], [s[2] for s in req.samples],
                                         {"stop_token": ends.count("stop_token"),
                                          "repetition": ends.count("repetition")}))
        return out

    def _room_needed(self) -> bool:
        return bool(self.waiting) and self.cache.max_batch - len(self.owners) < self.cfg.n

    def _keep(self, keep: torch.Tensor) -> None:
        """Only rows `keep` stay, gathered to the front of the batch and the cache."""
        if keep.numel():
            self.cache.gather_rows(keep, int(self.slot[keep].max()))
        index = keep.tolist()
        self.owners = [self.owners[i] for i in index]
        for name in ("tokens", "log_probs", "versions", "generated", "slot", "pos"):
            setattr(self, name, getattr(self, name)[keep])
        self.run = self.run[keep] if self.run is not None else None
        self.logits = self.logits[keep] if self.logits is not None and keep.numel() else None

    # --- admission -----------------------------------------------------------------------------

    def _admit(self) -> None:
        free = self.cache.max_batch - len(self.owners)
        fresh: list[_Sequence] = []
        while self.waiting and free >= self.cfg.n:
            req = self.waiting.popleft()
            fresh.append(_Sequence(list(req.request.prompt), len(req.request.prompt),
                                   [(req, j) for j in range(self.cfg.n)]))
            free -= self.cfg.n
        if fresh:
            if self.owners:
                self.admitted_while_running += len(fresh)
            self._prefill(fresh)

    def _take_update(self) -> None:
        """Apply the waiting weights and re-prefill every running sample under them."""
        live = [i for i, o in enumerate(self.owners) if o is not None]
        restart = self.updates.partial_rollout == "restart"
        seqs = []
        for i in live:
            kept = 0 if restart else int(self.generated[i])
            req, j = self.owners[i]
            prompt = list(req.request.prompt)
            seqs.append(_Sequence(prompt + self.tokens[i, :kept].tolist(), len(prompt), [(req, j)], kept,
                                  [(self.tokens[i].clone(), self.log_probs[i].clone(), self.versions[i].clone())]))
        self.interrupted += len(seqs)
        self._keep(torch.zeros(0, dtype=torch.long, device=self.device))
        self.updates.poll()
        if seqs:
            self._prefill(seqs)

    def _prefill(self, seqs: list[_Sequence]) -> None:
        """Prefill sequences into rows [n, ...), in chunks whose left-padded width leaves each its budget."""
        chunk: list[_Sequence] = []
        for seq in sorted(seqs, key=lambda s: s.kept):
            width = max([len(s.ids) for s in chunk + [seq]])
            budget = self.cfg.max_new_tokens - min(s.kept for s in chunk + [seq])
            if chunk and width + budget > self.cache.max_len:
                self._prefill_chunk(chunk)
                chunk = []
            chunk.append(seq)
        if chunk:
            self._prefill_chunk(chunk)

    def _prefill_chunk(self, seqs: list[_Sequence]) -> None:
        first, dev, r = len(self.owners), self.device, self.cfg.max_new_tokens
        width = max(len(s.ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.cfg.pad_token_id, dtype=torch.long, device=dev)
        valid = torch.zeros(len(seqs), width, dtype=torch.bool, device=dev)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.ids):] = torch.tensor(s.ids, dtype=torch.long, device=dev)
            valid[i, width - len(s.ids):] = True
        positions = (valid.cumsum(dim=-1) - 1).clamp(min=0)
        logits = self.model.prefill(ids, positions, valid, self.cache, first_row=first)
        fan = torch.tensor([i for i, s in enumerate(seqs) for _ in s.owners], dtype=torch.long, device=dev)
        if fan.numel() != len(seqs):
            self.cache.gather_rows(first + fan, width, first_row=first)
            logits = logits.index_select(0, fan)
        self.cache.set_key_valid(first, valid.index_select(0, fan))
        rows = len(fan)
        new = {"tokens": torch.zeros(rows, r, dtype=torch.long, device=dev),
               "log_probs": torch.zeros(rows, r, dtype=torch.float32, device=dev),
               "versions": torch.zeros(rows, r, dtype=torch.long, device=dev)}
        kept = []
        row = 0
        for s in seqs:
            for k, owner in enumerate(s.owners):
                if s.buffers:
                    new["tokens"][row], new["log_probs"][row], new["versions"][row] = s.buffers[k]
                self.owners.append(owner)
                kept.append(s.kept)
                row += 1
        for name, value in new.items():
            setattr(self, name, torch.cat([getattr(self, name), value]))
        kept_t = torch.tensor(kept, dtype=torch.long, device=dev)
        lengths = torch.tensor([len(seqs[i].ids) for i in fan.tolist()], dtype=torch.long, device=dev)
        self.generated = torch.cat([self.generated, kept_t])
        self.slot = torch.cat([self.slot, torch.full((rows,), width, dtype=torch.long, device=dev)])
        self.pos = torch.cat([self.pos, lengths])
        if self.run is not None:
            self.run = torch.cat([self.run, self.stops.new_run(rows)])
        self.logits = logits if self.logits is None or first == 0 else torch.cat([self.logits, logits])
