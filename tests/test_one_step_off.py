"""`trainer.mode=one_step_off`: step k+1's rollout overlaps step k's training, each sample one version old,
corrected by importance weights, and a killed run resumes training every prompt exactly once."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from e2e_helpers import fast_overrides, kill_train_during_step, tiny_model
from orchestrator import rollout_correction
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.entry import train
from orchestrator.tracking import read_metrics_jsonl
from orchestrator.trainer.lineage import DataLineage, prompt_keys
from workers.batch import Batch

STEPS, PROMPTS = 6, 24  # 24 training prompts, 4 per step: the run is exactly one epoch
NOT_DETERMINISTIC = ("timing_s/", "perf/", "seconds", "tokens_per_s", "time", "mem_", "_gib")


def _overrides(model: Path, root: Path, *extra: str) -> list[str]:
    return ["algorithm=grpo", "cluster.placement=split", "trainer.mode=one_step_off",
            *fast_overrides(model, root, steps=STEPS), f"task.params.n_train={PROMPTS}", "data.shuffle=true",
            "trainer.save_every=2", *extra]


def _steps(run: Path) -> dict[int, dict]:
    records = [r for r in read_metrics_jsonl(run / "metrics.jsonl") if "timing_s/step" in r]
    return {r["step"]: {k: v for k, v in r.items() if not any(p in k for p in NOT_DETERMINISTIC)} for r in records}


def _lineage(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("one-step-off") / "model")


@pytest.fixture(scope="module")
def reference(ray_cluster, model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    train(validate_config(compose_config(_overrides(model, root)), check_files=True))
    return root / "run"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_samples_are_one_version_old_corrected_and_every_prompt_is_trained_once(reference):
    steps = _steps(reference)
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert steps[1]["async/staleness_max"] == 0  # nothing was ready before the first step
    for k in range(2, STEPS + 1):
        assert steps[k]["async/staleness_mean"] == steps[k]["async/staleness_max"] == 1, k
        # fp32 engines, verified equal on step 1: the behaviour policy's log-probs are pi_old (no IS weight);
        # every step is a verify step here, so the trainer still measures the one-update gap
        assert "rollout_correction/is_weight_mean" not in steps[k]
        assert steps[k]["sync/logprob_mean_abs_diff"] > 0
    lineage = _lineage(reference)
    assert [line["step"] for line in lineage] == list(range(1, STEPS + 1))
    assert [line["policy_versions"] for line in lineage] == [[0]] + [[k - 2] for k in range(2, STEPS + 1)]
    counts = Counter(key for line in lineage for key in line["prompts"])
    assert len(counts) == PROMPTS and set(counts.values()) == {1}, counts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tis_recomputes_and_weights_stale_batches(ray_cluster, model, tmp_path):
    train(validate_config(compose_config(_overrides(model, tmp_path, "trainer.total_steps=3",
                                                    "algorithm.rollout_correction.mode=tis")), check_files=True))
    steps = _steps(tmp_path / "run")
    for k in (2, 3):
        assert steps[k]["rollout_correction/recomputed"] == 1 and steps[k]["async/staleness_max"] == 1
        assert steps[k]["rollout_correction/is_weight_mean"] != 1.0  # pi_old (trained) over mu (one update older)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_run_resumes_with_the_in_flight_batch_exactly_once(ray_cluster, model, reference, tmp_path):
    kill_train_during_step(_overrides(model, tmp_path), tmp_path / "run", step=4)
    run = tmp_path / "run"
    saved = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 2 <= saved < STEPS
    assert (run / "checkpoints" / f"step_{saved}" / "next_batch.pt").is_file()
    train(validate_config(compose_config(_overrides(model, tmp_path, "trainer.resume=true")), check_files=True))
    counts = Counter(key for line in _lineage(run) for key in line["prompts"])
    assert len(counts) == PROMPTS and set(counts.values()) == {1}, counts
    got, want = _steps(run), _steps(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    for k in range(saved + 1, STEPS + 1):  # the resumed run is the interrupted one, step for step
        diff = {key: (got[k].get(key), v) for key, v in want[k].items() if got[k].get(key) != v}
        assert not diff, f"step {k} differs from the uninterrupted run: {diff}"


@pytest.mark.parametrize("overrides,key", [
    (["trainer.mode=one_step_off"], "cluster.placement"),
    (["trainer.mode=async"], "cluster.placement"),
    (["trainer.mode=async", "cluster.placement=split", "rollout.on_stale=keep"], "rollout.on_stale"),
    (["trainer.mode=async", "cluster.placement=split", "rollout.partial_rollout=resume"], "rollout.partial_rollout"),
    (["trainer.mode=async", "cluster.placement=split", "rollout.max_staleness=-1"], "rollout.max_staleness"),
    (["trainer.mode=async", "cluster.placement=split", "rollout.async_calls=0"], "rollout.async_calls"),
    (["trainer.mode=async", "cluster.placement=split", "algorithm=opo"], "trainer.mode"),
    (["trainer.mode=async", "cluster.placement=split", "rollout.kernels=cpp"], "rollout.stream"),
    (["trainer.mode=sometimes"], "trainer.mode"),
    (["trainer.mode=one_step_off", "cluster.placement=split", "algorithm=remax"], "algorithm.adv_estimator"),
    (["trainer.mode=one_step_off", "cluster.placement=split", "algorithm=dapo"], "algorithm.dynamic_sampling.enable"),
])
def test_modes_that_cannot_work_are_rejected_with_their_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides), check_files=False)
    assert err.value.key == key


def test_auto_correction_weights_a_stale_batch_like_tis():
    settings = OmegaConf.create({"mode": "auto", "is_level": "token", "is_threshold": 2.0, "equal_tolerance": 1e-4})
    old = torch.tensor([[0.0, -1.0, -2.0]])
    mu = torch.tensor([[-0.5, -1.0, -0.5]])  # w = e^0.5, 1, e^-1.5 (the first truncated at 2)
    batch = Batch.from_dict({"old_log_probs": old, "rollout_log_probs": mu,
                             "response_mask": torch.tensor([[1, 1, 1]]), "advantages": torch.ones(1, 3)})
    fresh, _ = rollout_correction.correct(batch.slice(0, 1), settings, stale=False)
    assert torch.equal(fresh["advantages"], torch.ones(1, 3))  # same policy: nothing to correct
    stale, metrics = rollout_correction.correct(batch.slice(0, 1), settings, stale=True)
    assert torch.allclose(stale["advantages"], torch.tensor([[min(2.0, 1.6487213), 1.0, 0.2231302]]), atol=1e-6)
    assert metrics["rollout_correction/truncated_frac"] == pytest.approx(0.0)  # e^0.5 = 1.65 < 2


def test_lineage_counts_prompt_groups_and_rewinds_with_a_resume(tmp_path):
    batch = Batch.from_dict({"policy_version": torch.tensor([3, 3, 3, 3])},
                            non_tensors={"uid": ["e1s7r1-10", "e1s7r1-10", "e1s7r1-4", "e1s7r1-4"]})
    assert prompt_keys(batch) == ["e1-10", "e1-4"]
    lineage = DataLineage(tmp_path / "lineage.jsonl")
    for step in (1, 2, 3):
        lineage.record(step, batch)
    lineage.rewind(2)
    lines = [json.loads(x) for x in (tmp_path / "lineage.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and lines[0]["policy_versions"] == [3]
