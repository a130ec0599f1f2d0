"""`baton train cluster.placement=split` end to end: GRPO, 2 FSDP2 trainer ranks, 1 rollout worker
in a pool of its own, weights broadcast over gloo after every update."""
from __future__ import annotations

import pytest

from e2e_helpers import fast_overrides, tiny_model
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.entry import train
from orchestrator.tracking import read_metrics_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_grpo_three_steps_with_rollout_in_its_own_pool(ray_cluster, tmp_path):
    model = tiny_model(tmp_path / "model")
    cfg = validate_config(compose_config(["algorithm=grpo", "cluster.placement=split",
                                          *fast_overrides(model, tmp_path, steps=3)]), check_files=True)
    summary = train(cfg)
    assert summary["steps"] == 3
    records = [r for r in read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl") if "timing_s/step" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        # the rollout worker generated with exactly the weights the trainer holds
        assert r["sync/logprob_max_abs_diff"] < 1e-4
        assert r["sync/broadcast_bytes"] >= r["sync/stream_bytes"] > 0
        assert r["sync/tensors_received"] == r["sync/tensors"] > 0
        assert r["actor/grad_norm"] >= 0 and r["timing_s/update_actor"] > 0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_3"


def test_split_needs_a_rollout_device():
    cfg = compose_config(["cluster.placement=split", "cluster.rollout_devices_per_node=0"])
    with pytest.raises(ConfigError, match=r"cluster\.rollout_devices_per_node.*split"):
        validate_config(cfg, check_files=False)
