"""Continuous batching in the built-in engine (request-level generation for trainer.mode=async): prompts join
the running batch as rows free up, groups come back as soon as their samples end, the tokens and log-probs
are those of the one-call engine and of the training forward, and weights taken mid-stream re-prefill every
running sample (continue / restart) so each token's log-prob is its own version's."""
from __future__ import annotations

import pytest
import torch

from test_builtin_rollout import PAD, hf_training_log_probs, make_engine, make_hf, params, prompts
from workers.batch import Batch
from workers.rollout.streaming import finished_batch, request_for
from workers.rollout.weight_updates import WeightMailbox

MAX_NEW = 12


def prompt_rows(batch: int, width: int = 7, seed: int = 1) -> list[Batch]:
    ids, mask = prompts(batch=batch, width=width, seed=seed)
    return [Batch.from_dict({"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]},
                            non_tensors={"uid": [f"p{i}"]}) for i in range(batch)]


def run_stream(engine, rows: list[Batch], sampling, *, updates=None, add_at: dict[int, list[int]] | None = None,
               on_step=None):
    """Drive a stream to the end; prompts in add_at[step] join before that step. -> ({uid: (Batch, step)}, batcher)"""
    add_at = add_at or {0: list(range(len(rows)))}
    engine.start_stream(sampling, updates)
    by_uid = {r.non_tensors["uid"][0]: r for r in rows}
    done, step = {}, 0
    while step <= max(add_at) or engine.pending():
        engine.add([request_for(rows[i], seed=0) for i in add_at.get(step, [])])
        if on_step is not None:
            on_step(step)
        for group in engine.step():
            done[group.request_id] = (finished_batch(by_uid[group.request_id], group, max_new_tokens=MAX_NEW,
                                                     pad_token_id=PAD, seconds=0.0), step)
        step += 1
        assert step < 500, "stream never drained"
    return done, engine._stream


def test_greedy_stream_equals_one_call_generation_and_prompts_join_as_rows_free_up():
    hf = make_hf(seed=0)
    engine = make_engine(hf, max_batch_size=4)  # n=2: two groups decode at once, the rest wait for rows
    ids, mask = prompts(batch=6, width=7)
    free, _ = make_engine(hf).generate_tensors(ids, mask, params(n=1, max_new_tokens=MAX_NEW, stop_token_ids=()))
    stop = int(free["responses"][0, 2])  # prompt 0 ends after 3 tokens, others run on
    sampling = params(n=2, max_new_tokens=MAX_NEW, stop_token_ids=(stop,))
    reference, _ = make_engine(hf).generate_tensors(ids, mask, sampling)
    done, batcher = run_stream(engine, prompt_rows(6), sampling, add_at={0: [0, 1, 2, 3], 5: [4, 5]})
    assert sorted(done) == [f"p{i}" for i in range(6)]
    for i in range(6):
        out, _ = done[f"p{i}"]
        rows = slice(2 * i, 2 * i + 2)
        assert torch.equal(out["responses"], reference["responses"][rows])
        assert torch.allclose(out["rollout_log_probs"], reference["rollout_log_probs"][rows], atol=1e-5)
        assert bool((out["token_versions"][out["response_mask"].bool()] == 0).all())
    # request level: the short group came back first, and waiting prompts took its rows while others decoded
    assert done["p0"][1] < min(done[f"p{i}"][1] for i in range(1, 6))
    assert batcher.admitted_while_running >= 2


def test_sampled_stream_log_probs_match_the_training_forward():
    hf = make_hf(seed=0)
    engine = make_engine(hf, max_batch_size=6)
    engine.wake_up()
    engine.cache._block().fill_(float("nan"))  # what uninitialised memory may hold: masked slots must not leak it
    sampling = params(n=3, temperature=1.0, max_new_tokens=MAX_NEW, seed=1, stop_token_ids=(5, 9, 11, 13))
    done, batcher = run_stream(engine, prompt_rows(5), sampling, add_at={0: [0, 1, 2], 3: [3, 4]})
    outs = [done[f"p{i}"][0] for i in range(5)]
    assert batcher.admitted_while_running >= 1
    for out in outs:
        valid = out["response_mask"].bool()
        expect = hf_training_log_probs(hf, out, temperature=1.0)
        assert torch.allclose(out["rollout_log_probs"][valid], expect[valid], atol=1e-4)
    lengths = torch.cat([o["response_mask"].sum(-1) for o in outs])
    assert lengths.min() < MAX_NEW and lengths.max() > lengths.min()  # ragged rows really were exercised


@pytest.mark.parametrize("mode", ["continue", "restart"])
def test_weights_taken_mid_stream_re_prefill_running_samples(mode):
    old, new = make_hf(seed=0), make_hf(seed=5)
    engine = make_engine(old, max_batch_size=6)
    mailbox = WeightMailbox(engine.load_weights, version=0, partial_rollout=mode)
    sampling = params(n=2, temperature=1.0, max_new_tokens=MAX_NEW, seed=2, stop_token_ids=())

    def deliver(step: int) -> None:
        if step == 4:  # after 4 decode steps of the first groups; applied before the next one
            mailbox.deliver(1, list(new.state_dict().items()))

    with mailbox.generating():
        done, batcher = run_stream(engine, prompt_rows(5), sampling, updates=mailbox,
                                   add_at={0: [0, 1, 2], 2: [3, 4]}, on_step=deliver)
    assert batcher.interrupted == 6  # every running sample (3 groups x 2)
    mixed = 0
    for i in range(5):
        out = done[f"p{i}"][0]
        valid, versions = out["response_mask"].bool(), out["token_versions"]
        v0, v1 = valid & (versions == 0), valid & (versions == 1)
        mixed += int((v0.any(-1) & v1.any(-1)).sum())
        if v0.any():
            assert torch.allclose(out["rollout_log_probs"][v0], hf_training_log_probs(old, out, 1.0)[v0], atol=1e-4)
        assert torch.allclose(out["rollout_log_probs"][v1], hf_training_log_probs(new, out, 1.0)[v1], atol=1e-4)
    if mode == "continue":
        assert mixed == 6  # the interrupted samples switch 0 -> 1 mid-sequence
    else:
        assert mixed == 0 and all(bool((done[f"p{i}"][0]["token_versions"][done[f"p{i}"][0]["response_mask"].bool()]
                                        == 1).all()) for i in range(5))


def test_streams_and_calls_alternate_and_end_stream_returns_what_was_waiting_or_running():
    hf = make_hf(seed=0)
    engine = make_engine(hf, max_batch_size=4)
    ids, mask = prompts(batch=2)
    before, _ = engine.generate_tensors(ids, mask, params(n=1, max_new_tokens=4))  # a call first, then a stream
    engine.start_stream(params(n=2, max_new_tokens=MAX_NEW, stop_token_ids=()))
    engine.add([request_for(r, seed=0) for r in prompt_rows(3)])
    engine.step()
    assert engine.pending() == 3
    assert sorted(engine.end_stream()) == ["p0", "p1", "p2"] and engine.pending() == 0
    out, _ = engine.generate_tensors(ids, mask, params(n=1, max_new_tokens=4))
    assert torch.equal(out["responses"], before["responses"])


def test_a_prompt_too_long_for_the_cache_is_refused_naming_the_request():
    engine = make_engine(make_hf(seed=0), max_seq_len=20)
    engine.start_stream(params(n=1, max_new_tokens=MAX_NEW))
    row = prompt_rows(1, width=9)[0]
    with pytest.raises(ValueError, match="'p0'"):
        engine.add([request_for(row, seed=0)])


def test_the_stream_thread_decodes_while_the_caller_waits_and_its_errors_reach_the_caller():
    from workers.rollout.stream_driver import StreamDriver
    from workers.rollout.streaming import GroupRequest

    engine = make_engine(make_hf(seed=0), max_batch_size=8)
    driver = StreamDriver(engine, WeightMailbox(engine.load_weights, version=0, partial_rollout="continue"),
                          "rollout rank 3")
    driver.start(params(n=2, max_new_tokens=MAX_NEW, stop_token_ids=()))
    driver.submit([request_for(r, seed=0) for r in prompt_rows(3)])
    groups = []
    for _ in range(100):
        groups += driver.collect(1, 5.0)
        if len(groups) == 3:
            break
    assert sorted(g.request_id for g in groups) == ["p0", "p1", "p2"]
    assert all(len(t) == MAX_NEW for g in groups for t in g.tokens)
    driver.submit([GroupRequest("bad", [10**6], seed=0)])  # a token id outside the vocabulary
    with pytest.raises(RuntimeError, match="rollout rank 3: the generation stream failed"):
        for _ in range(100):
            driver.collect(1, 5.0)
    driver.stop()
    driver.start(params(n=2, max_new_tokens=4, stop_token_ids=()))  # the engine serves a new stream after it
    driver.submit([request_for(prompt_rows(1)[0], seed=0)])
    assert [g.request_id for g in driver.collect(1, 30.0)] == ["p0"]
    driver.stop()
