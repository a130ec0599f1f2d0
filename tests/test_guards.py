"""Divergence and collapse guards, on hand-made step metrics (the end-to-end runs are in test_divergence_e2e.py)."""
from __future__ import annotations

import math

from omegaconf import OmegaConf

from orchestrator.trainer.guards import HealthGuard

OK = {"reward/mean": 0.4, "actor/entropy": 0.8, "actor/grad_norm": 0.3, "actor/step_skipped": 0.0,
      "actor/param_norm": 12.0}


def _guard(on_nonfinite="skip", max_skipped=3, collapse_steps=2) -> HealthGuard:
    return HealthGuard(OmegaConf.create({"on_nonfinite": on_nonfinite, "max_skipped_steps": max_skipped,
                                         "collapse": {"steps": collapse_steps, "entropy": 1e-3, "reward": 1e-6}}))


def test_healthy_steps_pass():
    guard = _guard()
    for _ in range(5):
        verdict = guard.check(dict(OK))
        assert verdict.healthy and verdict.stop is None


def test_skip_mode_stops_after_max_skipped_steps_in_a_row_and_names_the_metric():
    guard = _guard(max_skipped=3)
    nan_loss = {**OK, "actor/pg_loss": math.nan}
    for _ in range(2):  # skipped, unhealthy (not checkpointed), but the run goes on
        verdict = guard.check(nan_loss)
        assert not verdict.healthy and verdict.stop is None
    verdict = guard.check(nan_loss)
    assert not verdict.healthy
    assert "non-finite actor/pg_loss" in verdict.stop and "3 steps in a row" in verdict.stop
    assert "trainer.max_skipped_steps=3" in verdict.stop
    assert guard.skipped_total == 3


def test_a_healthy_step_resets_the_skip_streak():
    guard = _guard(max_skipped=2)
    skipped = {**OK, "actor/step_skipped": 1.0, "actor/grad_norm": math.inf}
    assert guard.check(skipped).stop is None
    assert guard.check(dict(OK)).healthy
    assert guard.check(skipped).stop is None  # streak restarted at 1
    assert "2 steps in a row" in guard.check(skipped).stop


def test_stop_mode_stops_at_the_first_non_finite_step():
    verdict = _guard(on_nonfinite="stop").check({**OK, "actor/step_skipped": 0.5})
    assert verdict.stop == "actor/step_skipped > 0 (non-finite gradient norm) (trainer.on_nonfinite=stop)"


def test_non_finite_weights_stop_even_in_skip_mode():
    verdict = _guard(on_nonfinite="skip", max_skipped=10).check({**OK, "actor/param_norm": math.inf})
    assert not verdict.healthy and "actor/param_norm=inf: the weights are no longer finite" in verdict.stop


def test_collapse_needs_low_entropy_and_zero_reward_for_n_steps():
    guard = _guard(collapse_steps=2)
    collapsed = {**OK, "actor/entropy": 1e-5, "reward/mean": 0.0}
    assert guard.check({**OK, "actor/entropy": 1e-5}).healthy  # deterministic but earning: fine
    assert guard.check({**OK, "reward/mean": 0.0}).healthy  # earning nothing but still exploring: fine
    first = guard.check(collapsed)
    assert not first.healthy and first.stop is None
    assert "policy collapsed: actor/entropy=1e-05 < trainer.collapse.entropy=0.001" in guard.check(collapsed).stop


def test_collapse_guard_off():
    guard = _guard(collapse_steps=0)
    for _ in range(5):
        assert guard.check({**OK, "actor/entropy": 0.0, "reward/mean": 0.0}).healthy


def test_state_round_trips():
    guard = _guard()
    guard.check({**OK, "actor/pg_loss": math.nan})
    restored = _guard()
    restored.restore(guard.state())
    assert restored.state() == guard.state() == {"skipped_in_a_row": 1, "collapsed_in_a_row": 0, "skipped_total": 1}
