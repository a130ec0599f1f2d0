"""VLLMRequestStream: request-level generation (streaming.RequestStream) on an in-process vLLM engine.

The asynchronous trainer wants each prompt group back as soon as its samples end, not when the slowest
row of a batch does. vLLM's scheduler already batches continuously; `LLM.generate` only hides that behind
one call, so the stream drives its `LLMEngine` directly: one vLLM request per sample (`add_request`), one
`step()` per stream step, and a group is returned once all its samples have finished.

Weight updates (same semantics as the built-in engine's partial rollouts, builtin/partial.py): when new
weights wait (`updates.ready()`), every unfinished request is aborted first, keeping what its sample has
so far, then the weights are applied (`updates.poll()`: the reload resets vLLM's prefix cache, which it
refuses while requests run), then each sample is re-added: "continue" re-prefills prompt + its tokens so
far with the remaining budget, "restart" drops them. Re-adding rebuilds the KV cache, so no token after an
update is computed over KV from older weights; each token records the version that sampled it.

vLLM (0.32, in-process) details this relies on: a request's outputs are keyed by the id it was added
with (vLLM appends a random suffix internally, so an aborted id can be reused at once); an aborted request
produces no further output in the synchronous engine; requests are read in DELTA mode, and a CUMULATIVE
setting would be handled too.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from workers.rollout.base import SamplingParams
from workers.rollout.streaming import FinishedGroup, GroupRequest
from workers.rollout.vllm_engine import repetition_stop_length
from workers.rollout.vllm_world import WorldScoped, private_world
from workers.rollout.weight_updates import WeightUpdates

if TYPE_CHECKING:
    from workers.rollout.vllm_engine import VLLMRolloutEngine

_SEED_MASK = (1 << 63) - 1


@dataclass
class _Sample:
    """One of a group's n samples: what it has so far across the vLLM requests it took."""

    seed: int
    tokens: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    received: int = 0  # tokens received from its current vLLM request
    delta: bool = True  # its current request's output kind: DELTA (new tokens only) or CUMULATIVE
    finished: bool = False


@dataclass
class _Group:
    request: GroupRequest
    samples: list[_Sample]


def resume_seed(seed: int, done: int) -> int:
    """Seed of a request re-added after `done` kept tokens (0: the sample's own seed).

    Re-seeding with the sample's own seed would replay the random draws that picked its first tokens.
    """
    if done == 0:
        return seed
    return (seed * 0x9E3779B97F4A7C15 + done * 0xBF58476D1CE4E5B9) & _SEED_MASK


class VLLMRequestStream:
    """Streams prompt groups through `engine`'s vLLM `LLMEngine`; driven from one thread."""

    output_kind = "DELTA"  # vLLM RequestOutputKind the requests use (CUMULATIVE works too, copying more)

    def __init__(self, engine: VLLMRolloutEngine) -> None:
        self.engine = engine
        self._params: SamplingParams | None = None
        self._updates: WeightUpdates | None = None
        self._groups: dict[str, _Group] = {}  # added and not yet returned, in the order added
        self._running: dict[str, tuple[_Group, int]] = {}  # vLLM request id -> (group, sample index)
        self.interrupted = 0  # unfinished samples (with tokens) that weight updates interrupted, this stream
        self.updates_taken = 0

    # --- RequestStream ------------------------------------------------------------------

    def start_stream(self, params: SamplingParams, updates: WeightUpdates | None = None) -> None:
        """Begin a stream; the previous one must have ended (end_stream) or returned all its groups."""
        if self._groups:
            raise RuntimeError(f"vllm stream: {len(self._groups)} requests still pending; call end_stream first")
        self.engine._check(params, [])
        self.engine.wake_up()  # also closes an open weight-update session
        self._params, self._updates = params, updates
        self.interrupted = self.updates_taken = 0

    def add(self, requests: list[GroupRequest]) -> None:
        """Validate all, then hand each sample to vLLM's scheduler at once (it admits them as rows free up)."""
        params = self._require_params()
        ids = [r.request_id for r in requests]
        clash = [i for i in ids if i in self._groups] or [i for i in set(ids) if ids.count(i) > 1]
        if clash:
            raise ValueError(f"vllm stream: request ids {sorted(clash)} are already pending")
        for r in requests:
            if not r.prompt:
                raise ValueError(f"vllm stream: request {r.request_id!r} has an empty prompt")
            if len(r.prompt) + params.max_new_tokens > self.engine.max_model_len:
                raise ValueError(
                    f"vllm stream: request {r.request_id!r}: prompt length {len(r.prompt)} + max_new_tokens "
                    f"{params.max_new_tokens} exceeds max_model_len={self.engine.max_model_len}"
                )
        for r in requests:
            group = _Group(r, [_Sample(seed=r.seed + j) for j in range(params.n)])
            self._groups[r.request_id] = group
            for j in range(params.n):
                self._submit(group, j)

    def step(self) -> list[FinishedGroup]:
        """Take waiting weights (abort, poll, re-add), run one vLLM step, return the groups that ended."""
        params = self._require_params()
        updates = self._updates
        if updates is not None and updates.ready():
            self._take_update(updates)
        version = updates.version if updates is not None else 0
        if self._running:
            with self._scope():
                outputs = self._llm_engine().step()
            for out in outputs:
                entry = self._running.get(out.request_id)
                if entry is None:
                    continue  # not (or no longer) one of this stream's requests
                sample = entry[0].samples[entry[1]]
                self._record(sample, out, version)
                if out.finished:
                    sample.finished = True
                    del self._running[out.request_id]
        done = [g for g in self._groups.values() if all(s.finished for s in g.samples)]
        for group in done:  # ties within one step: in the order added
            del self._groups[group.request.request_id]
        return [self._finish(group, params) for group in done]

    def pending(self) -> int:
        return len(self._groups)

    def end_stream(self) -> list[str]:
        """Abort every vLLM request of the stream; return the ids of the groups not returned."""
        if self._running:
            with self._scope():
                self._llm_engine().abort_request(list(self._running))
        dropped = list(self._groups)
        self._groups.clear()
        self._running.clear()
        self._params = self._updates = None
        return dropped

    # --- internals ----------------------------------------------------------------------

    def _require_params(self) -> SamplingParams:
        if self._params is None:
            raise RuntimeError("vllm stream: call start_stream first")
        return self._params

    def _scope(self) -> contextlib.AbstractContextManager[None]:
        """vLLM's private torch.distributed world, as `engine.llm`'s own calls get (tp > 1: the caller's)."""
        return private_world() if isinstance(self.engine.llm, WorldScoped) else contextlib.nullcontext()

    def _llm_engine(self) -> Any:
        return self.engine.llm.llm_engine

    def _submit(self, group: _Group, j: int) -> None:
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        params = self._require_params()
        sample = group.samples[j]
        budget = params.max_new_tokens - len(sample.tokens)
        if budget <= 0:
            sample.finished = True
            return
        vllm_params = self.engine._vllm_params(replace(params, max_new_tokens=budget),
                                               seed=resume_seed(sample.seed, len(sample.tokens)))
        vllm_params.output_kind = RequestOutputKind[self.output_kind]
        request_id = f"{group.request.request_id}#{j}"
        sample.received, sample.delta = 0, vllm_params.output_kind == RequestOutputKind.DELTA
        with self._scope():
            self._llm_engine().add_request(request_id, tokens_input(group.request.prompt + sample.tokens),
                                           vllm_params)
        self._running[request_id] = (group, j)

    def _record(self, sample: _Sample, out: Any, version: int) -> None:
        """Append this output's new tokens (DELTA: all of them; CUMULATIVE: those past `received`)."""
        completion = out.outputs[0]
        ids, logprobs = list(completion.token_ids), completion.logprobs
        for i in range(0 if sample.delta else sample.received, len(ids)):
            sample.tokens.append(ids[i])
            sample.log_probs.append(float(logprobs[i][ids[i]].logprob))
            sample.versions.append(version)
        sample.received = sample.received + len(ids) if sample.delta else len(ids)

    def _take_update(self, updates: WeightUpdates) -> None:
        """Abort what runs (keeping its tokens), apply the weights, re-add each unfinished sample."""
        entries = list(self._running.values())
        if entries:
            with self._scope():
                self._llm_engine().abort_request(list(self._running))
            self._running.clear()
        changed = updates.poll()  # False only if the weights were taken elsewhere meanwhile: samples go on
        self.updates_taken += changed
        for group, j in entries:
            sample = group.samples[j]
            self.interrupted += changed and bool(sample.tokens)
            if changed and updates.partial_rollout == "restart":
                sample.tokens, sample.log_probs, sample.versions = [], [], []
            self._submit(group, j)

    def _finish(self, group: _Group, params: SamplingParams) -> FinishedGroup:
        """Cut each sample like VLLMRolloutEngine.generate (MiniMax repetition stop) and count stops."""
        stop_ids = frozenset(int(t) for t in params.stop_token_ids)
        window, prob = int(params.repetition_stop_window), float(params.repetition_stop_prob)
        log_p_min = math.log(prob) if window > 0 and 0.0 < prob < 1.0 else None
        result = FinishedGroup(group.request.request_id, [], [], [], {"stop_token": 0, "repetition": 0})
        for sample in group.samples:
            tokens, lps, versions = sample.tokens, sample.log_probs, sample.versions
            cut = repetition_stop_length(tokens, lps, stop_ids, window, log_p_min) if log_p_min is not None else None
            if cut is not None:
                tokens, lps, versions = tokens[:cut], lps[:cut], versions[:cut]
                result.stops["repetition"] += 1
            elif tokens and tokens[-1] in stop_ids:
                result.stops["stop_token"] += 1
            result.tokens.append(list(tokens))
            result.log_probs.append(list(lps))
            result.versions.append(list(versions))
        return result
