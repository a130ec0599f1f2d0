"""Request-level generation: prompts join a running engine and come back one group at a time.

A generate call is one batch in, one batch out: every prompt waits for the slowest row. A stream instead
takes prompt groups whenever they come (`add`), decodes everything running one step at a time (`step`), and
hands back each group (one prompt's n samples) the moment its last sample ends, while its freed rows take
the next waiting prompts (continuous batching). The asynchronous trainer keeps a stream fed and trains on
whatever groups are ready (orchestrator/trainer/async_schedule.py).

Both engines implement `RequestStream`: the built-in engine with its own slot scheduler
(builtin/continuous.py), vLLM with its engine's own scheduler (vllm_stream.py). New weights are taken between
two steps (`updates.poll()`); what becomes of the running sequences follows `updates.partial_rollout`, and
every token records the policy version that sampled it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from workers.batch import Batch
from workers.rollout.base import SamplingParams
from workers.rollout.layout import rollout_output
from workers.rollout.stats import RolloutStats
from workers.rollout.weight_updates import WeightUpdates


@dataclass
class GroupRequest:
    """One prompt to sample n times; `request_id` is the prompt's uid (unique among running requests)."""

    request_id: str
    prompt: list[int]  # real token ids, no padding
    seed: int  # the group's samples draw from seeds derived from this one


@dataclass
class FinishedGroup:
    """A request's n samples, each cut at its end (stop token kept), with one version per token."""

    request_id: str
    tokens: list[list[int]]
    log_probs: list[list[float]]
    versions: list[list[int]]
    stops: dict[str, int] = field(default_factory=dict)  # stop_token / repetition counts of these samples


class RequestStream(Protocol):
    """Driven from one thread (workers/rollout/stream_driver.py); no method is called concurrently."""

    def start_stream(self, params: SamplingParams, updates: WeightUpdates | None) -> None:
        """Begin a stream with these sampling settings. Engines that sample every row from one generator (built-in)
        seed it with params.seed; engines that seed each request (vLLM) use GroupRequest.seed."""
        ...

    def add(self, requests: list[GroupRequest]) -> None:
        """Queue prompt groups; they start as rows free up."""
        ...

    def step(self) -> list[FinishedGroup]:
        """Take new weights if any arrived, admit waiting prompts, decode one token for every running sample;
        return the groups whose samples have all ended."""
        ...

    def pending(self) -> int:
        """Requests added and not yet returned by `step` (waiting or running)."""
        ...

    def end_stream(self) -> list[str]:
        """Drop whatever is waiting or running; return those request ids (the trainer regenerates them)."""
        ...


def request_for(prompt_row: Batch, seed: int) -> GroupRequest:
    """The request of a one-row prompt Batch (left-padded input_ids/attention_mask, a uid)."""
    ids, mask = prompt_row["input_ids"][0], prompt_row["attention_mask"][0].bool()
    return GroupRequest(prompt_row.non_tensors["uid"][0], ids[mask].tolist(), seed)


def finished_batch(prompt_row: Batch, group: FinishedGroup, *, max_new_tokens: int, pad_token_id: int,
                   seconds: float) -> Batch:
    """A finished group in the rollout layout of a generate call (base.RolloutEngine), plus token_versions."""
    n = len(group.tokens)
    tokens = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long)
    log_probs = torch.zeros(n, max_new_tokens, dtype=torch.float32)
    versions = torch.full((n, max_new_tokens), -1, dtype=torch.long)
    for i, (tok, lp, ver) in enumerate(zip(group.tokens, group.log_probs, group.versions, strict=True)):
        tokens[i, : len(tok)] = torch.as_tensor(tok, dtype=torch.long)
        log_probs[i, : len(lp)] = torch.as_tensor(lp, dtype=torch.float32)
        versions[i, : len(ver)] = torch.as_tensor(ver, dtype=torch.long)
    lengths = torch.tensor([len(t) for t in group.tokens], dtype=torch.long)
    out = prompt_row.repeat(n, interleave=True)
    for key, value in rollout_output(prompt_row["input_ids"], prompt_row["attention_mask"], tokens, log_probs,
                                     lengths, n).items():
        out[key] = value
    out["token_versions"] = versions
    out.meta["rollout_stats"] = RolloutStats.build(lengths=lengths.tolist(), stop_token=group.stops.get("stop_token", 0),
                                                   repetition=group.stops.get("repetition", 0), seconds=seconds)
    return out
