"""scripts/gpu_check.sh --dry-run: every check of the GPU script runs its code path on CPU, so it cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_gpu_check_dry_run_runs_every_check(tmp_path):
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)], capture_output=True,
                         text=True, timeout=280, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["check"] for r in rows] == ["fsdp2_step", "offload", "weight_stream", "decode", "chunked_logprobs",
                                          "varlen", "megatron_bf16"]
    assert not any(r["ok"] is False for r in rows), rows
    assert "reload bit-exact" in rows[1]["figure"] and "tok/s" in rows[3]["figure"]
    assert "gpu_check (dry run, CPU" in res.stdout
    assert "kernel per-row SDPA" in rows[5]["figure"]
