"""Partial rollouts (trainer.mode=async): weights that arrive between decode steps take effect at the next
step; with `continue` a sequence's tokens carry the version that sampled them and each token's recorded
log-prob is that version's; with `restart` an interrupted sequence is sampled again under the new weights.
The WeightMailbox hands weights from a receiving thread to the generating one."""
from __future__ import annotations

import threading

import pytest
import torch

from test_builtin_rollout import hf_training_log_probs, make_engine, make_hf, params, prompts
from workers.rollout.weight_updates import WeightMailbox


class UpdateAfterSteps:
    """The engine's side of a weight update, triggered at a chosen decode step (the mailbox's timing is a
    thread race; this pins it so the test knows which step each version covers)."""

    def __init__(self, engine, new_weights, *, after: int, mode: str):
        self.engine, self.new_weights, self.after = engine, new_weights, after
        self.version, self.partial_rollout, self.polls = 0, mode, 0

    def poll(self) -> bool:
        self.polls += 1
        if self.polls != self.after:
            return False
        self.engine.load_weights(self.new_weights.items())
        self.version = 1
        return True


def _generate(mode: str, after: int):
    old, new = make_hf(seed=0), make_hf(seed=5)
    engine = make_engine(old)
    ids, mask = prompts(batch=4, width=7)
    updates = UpdateAfterSteps(engine, new.state_dict(), after=after, mode=mode)
    out, stats = engine.generate_tensors(ids, mask, params(n=2, temperature=1.0, max_new_tokens=12, seed=3,
                                                             stop_token_ids=()), updates)
    return old, new, out, stats


def test_continue_switches_version_mid_sequence_and_log_probs_follow_each_version():
    old, new, out, stats = _generate("continue", after=4)  # 4 tokens sampled by v0, the rest by v1
    versions, valid = out["token_versions"], out["response_mask"].bool()
    assert torch.equal(versions[:, :4], torch.zeros(8, 4, dtype=torch.long))
    assert bool((versions[:, 4:][valid[:, 4:]] == 1).all()) and bool(valid[:, 4:].any())
    assert stats["partial_interrupted"] == 8.0
    by_old = hf_training_log_probs(old, out, temperature=1.0)
    by_new = hf_training_log_probs(new, out, temperature=1.0)
    recorded = out["rollout_log_probs"]
    v0, v1 = valid & (versions == 0), valid & (versions == 1)
    assert torch.allclose(recorded[v0], by_old[v0], atol=1e-4)
    assert torch.allclose(recorded[v1], by_new[v1], atol=1e-4)
    assert not torch.allclose(recorded[v1], by_old[v1], atol=1e-2)  # the two versions really differ


def test_restart_resamples_interrupted_sequences_under_the_new_weights():
    _, new, out, stats = _generate("restart", after=4)
    valid = out["response_mask"].bool()
    assert bool((out["token_versions"][valid] == 1).all())  # nothing of v0 survives an interrupted row
    assert stats["partial_interrupted"] == 8.0
    assert torch.allclose(out["rollout_log_probs"][valid], hf_training_log_probs(new, out, 1.0)[valid], atol=1e-4)


def test_rows_that_ended_before_the_update_keep_their_tokens():
    old, new = make_hf(seed=0), make_hf(seed=5)
    engine = make_engine(old)
    ids, mask = prompts(batch=4, width=7)
    free, _ = make_engine(old).generate_tensors(ids, mask, params(n=1, max_new_tokens=12, stop_token_ids=()))
    greedy = params(n=1, max_new_tokens=12, stop_token_ids=(int(free["responses"][0, 2]),))  # row 0 ends at 3
    before, _ = make_engine(old).generate_tensors(ids, mask, greedy)
    ended_early = before["response_mask"].sum(-1) < 6
    out, _ = engine.generate_tensors(ids, mask, greedy, UpdateAfterSteps(engine, new.state_dict(), after=6,
                                                                       mode="restart"))
    rows = ended_early.nonzero().squeeze(-1)
    assert 0 < rows.numel() < 4  # some rows ended before the update, some did not
    assert torch.equal(out["responses"][rows], before["responses"][rows])
    assert bool((out["token_versions"][rows][out["response_mask"][rows].bool()] == 0).all())


def test_mailbox_applies_at_once_when_idle_and_at_the_next_poll_while_generating():
    applied: list[str] = []
    box = WeightMailbox(lambda weights: applied.extend(name for name, _ in weights), version=0,
                        partial_rollout="continue")
    assert box.deliver(1, [("a", torch.zeros(1))]) and box.version == 1 and applied == ["a"]
    with box.generating():
        thread = threading.Thread(target=box.deliver, args=(2, [("b", torch.zeros(1))]))
        thread.start()
        thread.join(timeout=10)
        assert applied == ["a"] and box.version == 1  # the generating thread takes it, between two steps
        assert box.poll() and applied == ["a", "b"] and box.version == 2 and box.updates_applied == 1
        assert not box.poll()
        box.deliver(3, [("c", torch.zeros(1))])
    assert applied == ["a", "b", "c"] and box.version == 3  # arrived after the last step: taken at exit
    with pytest.raises(ValueError, match="partial_rollout"):
        WeightMailbox(lambda w: None, version=0, partial_rollout="resume")
