"""A diverging run stops with a message naming the step, and never checkpoints a diverged model (real Ray, 2 ranks).

`actor.optim.lr=1e30` is the issue's case: the first update leaves the weights huge but finite, so
nothing in that step's own metrics is wrong; the next forward overflows.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.entry import train
from orchestrator.run_errors import TrainingStopped
from orchestrator.tracking import read_metrics_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _cfg(model: Path, root: Path, steps: int, *extra: str):
    return validate_config(compose_config(["algorithm=grpo", *fast_overrides(model, root, steps), *extra]),
                           check_files=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("diverge") / "model")


def test_lr_1e30_after_a_healthy_checkpoint_stops_and_keeps_it_latest(ray_cluster, model, tmp_path):
    train(_cfg(model, tmp_path, 3, "trainer.save_every=3"))
    ckpts = tmp_path / "run" / "checkpoints"
    healthy = load_file(ckpts / "step_3" / "actor" / "model.safetensors")
    # one optimizer step per RL step, so step 4's own metrics stay finite: only the pre-checkpoint probe sees it
    with pytest.raises(TrainingStopped) as err:
        train(_cfg(model, tmp_path, 8, "trainer.resume=true", "trainer.save_every=1", "actor.optim.lr=1e30",
                   "actor.ppo_mini_batch_size=4"))
    assert err.value.step == 4
    assert "training stopped at step 4: the update moved the log-probs of this step's tokens by" in str(err.value)
    assert "(> trainer.max_update_shift=5.0): the model diverged and was not checkpointed" in str(err.value)
    assert f"the last healthy checkpoint is {ckpts / 'step_3'}" in str(err.value)
    assert (ckpts / "latest").read_text().strip() == "step_3" and not (ckpts / "step_4").exists()
    again = load_file(ckpts / "step_3" / "actor" / "model.safetensors")
    assert all(t.isfinite().all() and t.equal(healthy[k]) for k, t in again.items())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "step 4" in summary["status_message"]


def test_lr_1e30_from_the_start_stops_before_any_checkpoint(ray_cluster, model, tmp_path):
    """Two mini-batches per step: the first update blows the weights up, the second sees NaN and is skipped."""
    with pytest.raises(TrainingStopped) as err:
        train(_cfg(model, tmp_path, 8, "trainer.save_every=3", "actor.optim.lr=1e30", "trainer.max_skipped_steps=2"))
    message = str(err.value)
    assert "steps in a row had non-finite values (trainer.max_skipped_steps=2)" in message
    assert "no checkpoint was written" in message
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if r["step"] > 0]
    assert records[-1]["step"] == err.value.step and records[-1]["guard/stopped"] == 1.0
    assert math.isfinite(records[0]["actor/param_norm"]) and records[0]["actor/param_norm"] > 1e20  # the blow-up
