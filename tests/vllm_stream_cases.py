"""Request-level generation on vLLM (VLLMRequestStream) against `generate` and HF forwards.

Collected through test_vllm_rollout.py (`from vllm_stream_cases import *`), whose module engine these tests
share: a vLLM engine takes ~20 s to start, and one per module would be a second one.
A group's seed is params.seed + i * n, so its samples use the seeds `generate` gives prompt i: a stream
without updates then samples exactly what `generate` does.
"""
from __future__ import annotations

import pytest
import torch

from test_vllm_rollout import PROMPTS, load_model, params, prompt_batch
from workers.rollout.streaming import FinishedGroup, GroupRequest
from workers.rollout.vllm_engine import VLLMRolloutEngine
from workers.rollout.vllm_stream import VLLMRequestStream
from workers.rollout.weight_updates import WeightMailbox

pytestmark = pytest.mark.vllm

IDS = ["a", "b", "c"]
R = 16  # max_new_tokens
UPDATE_AFTER = 5  # stream steps before new weights are delivered


@pytest.fixture
def weights_a(engine, models):
    """Each test starts on model a and leaves the engine on it, whatever it loads meanwhile."""
    load_model(engine, models["a"])
    yield
    load_model(engine, models["a"])


def request(i: int, n: int, seed: int = 7) -> GroupRequest:
    return GroupRequest(IDS[i], list(PROMPTS[i]), seed=seed + i * n)


def drain(stream, first_step: int, returned: dict[str, int], groups: dict[str, FinishedGroup]) -> int:
    """Step until nothing is pending, recording each group and the step that returned it."""
    step = first_step
    while stream.pending():
        for group in stream.step():
            returned[group.request_id], groups[group.request_id] = step, group
        step += 1
        assert step < 10 * R, "stream did not finish"
    return step


def rows(out, n: int) -> list[tuple[list[int], list[float]]]:
    """generate's rows (interleaved, n per prompt) cut to their lengths."""
    result = []
    for i in range(len(out)):
        length = int(out["response_mask"][i].sum())
        result.append((out["responses"][i, :length].tolist(), out["rollout_log_probs"][i, :length].tolist()))
    return result


def hf_token_log_probs(model: torch.nn.Module, prompt: list[int], tokens: list[int]) -> list[float]:
    """log softmax(logits) of each response token under `model` (temperature 1)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(tokens) - 1], dim=-1)
    return logp.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1).tolist()


def early_stop(engine: VLLMRolloutEngine) -> int:
    """A token that greedy prompt c emits among its first three and greedy prompt a never does."""
    out = rows(engine.generate(prompt_batch(), params(temperature=0.0, max_new_tokens=R)), 1)
    stop = next((t for t in out[2][0][:3] if t not in out[0][0]), None)
    assert stop is not None, "no early stop token for prompt c: the tiny model changed"
    return stop


def switch_weights(engine: VLLMRolloutEngine, partial: str) -> WeightMailbox:
    def apply(weights) -> None:
        engine.load_weights(weights)
        engine.finish_weight_update()

    return WeightMailbox(apply, version=0, partial_rollout=partial)


def named(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, t.detach().clone()) for name, t in model.named_parameters()]


def stream_with_update(engine, models, sampled, partial: str):
    """Stream the three prompts, deliver model b after UPDATE_AFTER steps, drain.
    -> (stream, mailbox, every group by id, ids of the groups that had ended before the update)."""
    mailbox = switch_weights(engine, partial)
    stream = VLLMRequestStream(engine)
    groups: dict[str, FinishedGroup] = {}
    with mailbox.generating():
        stream.start_stream(sampled, mailbox)
        stream.add([request(i, sampled.n) for i in range(3)])
        for _ in range(UPDATE_AFTER):
            groups.update((g.request_id, g) for g in stream.step())
        early = sorted(groups)
        assert not mailbox.deliver(1, named(models["b"]))  # waits for the stream's next step
        drain(stream, UPDATE_AFTER, {}, groups)
    return stream, mailbox, groups, early


@pytest.mark.parametrize("output_kind", ["DELTA", "CUMULATIVE"])
def test_greedy_stream_equals_generate_and_returns_groups_as_they_finish(engine, weights_a, monkeypatch,
                                                                         output_kind):
    monkeypatch.setattr(VLLMRequestStream, "output_kind", output_kind)
    n, stop = 2, early_stop(engine)
    greedy = params(n=n, temperature=0.0, max_new_tokens=R, stop_token_ids=(stop,))
    expected = rows(engine.generate(prompt_batch(), greedy), n)
    engine.start_stream(greedy, None)
    returned: dict[str, int] = {}
    groups: dict[str, FinishedGroup] = {}
    added_at = {"a": 0, "b": 2, "c": 4}
    step = 0
    while step < max(added_at.values()) + 1:  # staggered: a at step 0, b at 2, c at 4
        engine.add([request(i, n) for i, rid in enumerate(IDS) if added_at[rid] == step])
        for group in engine.step():
            returned[group.request_id], groups[group.request_id] = step, group
        step += 1
    drain(engine, step, returned, groups)
    assert engine.pending() == 0 and engine.end_stream() == []
    for i, rid in enumerate(IDS):
        group = groups[rid]
        assert group.versions == [[0] * len(t) for t in group.tokens]
        for j in range(n):
            tokens, lps = expected[i * n + j]
            assert group.tokens[j] == tokens
            assert max(abs(x - y) for x, y in zip(group.log_probs[j], lps)) < 1e-5
        length = len(group.tokens[0])
        assert returned[rid] == added_at[rid] + length - 1  # one token per step, from the step it was added
        assert group.stops == {"stop_token": n if group.tokens[0][-1] == stop else 0, "repetition": 0}
    assert len(groups["a"].tokens[0]) == R and len(groups["c"].tokens[0]) <= 3
    assert returned["c"] < returned["a"]  # added last, returned first: request-level, not batch-level
    assert len(set(returned.values())) > 1


def test_update_mid_stream_continue_keeps_tokens_and_versions(engine, models, weights_a):
    n, sampled = 2, params(n=2, temperature=1.0, max_new_tokens=R)
    reference = rows(engine.generate(prompt_batch(), sampled), n)  # same seeds, model a, no update
    stream, mailbox, groups, early = stream_with_update(engine, models, sampled, "continue")
    assert early == []  # no group had ended before the update
    assert mailbox.version == 1 and mailbox.updates_applied == 1
    assert stream.interrupted == 3 * n and stream.updates_taken == 1
    for i, rid in enumerate(IDS):
        group = groups[rid]
        for j in range(n):
            tokens, versions = group.tokens[j], group.versions[j]
            assert versions == [0] * UPDATE_AFTER + [1] * (R - UPDATE_AFTER)  # switched mid-sequence
            assert tokens[:UPDATE_AFTER] == reference[i * n + j][0][:UPDATE_AFTER]  # kept across the update
            ref = {v: hf_token_log_probs(models[key], PROMPTS[i], tokens) for v, key in ((0, "a"), (1, "b"))}
            expect = [ref[v][k] for k, v in enumerate(versions)]
            assert max(abs(x - y) for x, y in zip(group.log_probs[j], expect)) < 1e-4


def test_update_mid_stream_restart_resamples_interrupted_samples(engine, models, weights_a):
    n, stops = 2, (5, 9, 20, 33, 41)
    sampled = params(n=n, temperature=1.0, max_new_tokens=R, stop_token_ids=stops)
    lengths = [len(t) for t, _ in rows(engine.generate(prompt_batch(), sampled), n)]
    stream, mailbox, groups, _ = stream_with_update(engine, models, sampled, "restart")
    ended_before = [length <= UPDATE_AFTER for length in lengths]
    assert any(ended_before) and not all(ended_before), lengths  # the seed gives both kinds
    assert stream.interrupted == ended_before.count(False)
    for i, rid in enumerate(IDS):
        group = groups[rid]
        for j in range(n):
            tokens, versions = group.tokens[j], group.versions[j]
            version = 0 if ended_before[i * n + j] else 1
            assert versions == [version] * len(tokens)  # nothing of version 0 survives a restart
            expect = hf_token_log_probs(models["a" if version == 0 else "b"], PROMPTS[i], tokens)
            assert max(abs(x - y) for x, y in zip(group.log_probs[j], expect)) < 1e-4
            assert len(tokens) == R or tokens[-1] in stops


def test_end_stream_drops_unfinished_groups_and_engine_still_generates(engine, weights_a):
    stop = early_stop(engine)
    greedy = params(n=1, temperature=0.0, max_new_tokens=R, stop_token_ids=(stop,))
    before = engine.generate(prompt_batch(), greedy)
    engine.start_stream(greedy, None)
    engine.add([request(i, 1) for i in range(3)])
    finished = [g.request_id for _ in range(4) for g in engine.step()]
    assert "c" in finished and "a" not in finished  # c stops within 3 tokens, a runs 16
    dropped = engine.end_stream()
    assert dropped == [rid for rid in IDS if rid not in finished] and engine.pending() == 0
    after = engine.generate(prompt_batch(), greedy)
    assert torch.equal(after["responses"], before["responses"])
    assert torch.equal(after["rollout_log_probs"], before["rollout_log_probs"])
    engine.start_stream(greedy, None)  # a new stream may reuse the dropped ids
    engine.add([request(0, 1)])
    groups: dict[str, FinishedGroup] = {}
    drain(engine, 0, {}, groups)
    assert groups["a"].tokens[0] == before["responses"][0].tolist()


def test_add_refuses_bad_requests(engine):
    engine.start_stream(params(max_new_tokens=R), None)
    with pytest.raises(ValueError, match="'long'.*max_model_len"):
        engine.add([GroupRequest("ok", [20, 21], 0), GroupRequest("long", [20] * 120, 0)])
    assert engine.pending() == 0  # nothing of a refused call is queued
    engine.add([GroupRequest("ok", [20, 21], 0)])
    with pytest.raises(ValueError, match="already pending"):
        engine.add([GroupRequest("ok", [22], 0)])
    with pytest.raises(ValueError, match="'empty'.*empty prompt"):
        engine.add([GroupRequest("empty", [], 0)])
    with pytest.raises(RuntimeError, match="end_stream first"):
        engine.start_stream(params(max_new_tokens=R), None)
    assert engine.end_stream() == ["ok"] and engine.pending() == 0
