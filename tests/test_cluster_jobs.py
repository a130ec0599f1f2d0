"""`baton submit` / `baton jobs` against a real 2-node Ray cluster on this machine (`baton cluster up`).

Each node is its own `ray start` (own raylet, object store and CPU), so ranks on "two nodes" are in
different Ray nodes exactly as on two machines; only the filesystem is shared, which is what
`cluster.shared_dir` asks of a real cluster. The node-kill test runs last: it takes a node away.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cluster import local_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(cluster_dir: Path) -> dict[str, str]:
    env = dict(os.environ, BATON_CLUSTER_DIR=str(cluster_dir))
    env.pop("RAY_ADDRESS", None)
    env.pop("BATON_JOB_ADDRESS", None)
    return env


def _baton(cluster_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=_env(cluster_dir),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = Path(f"/tmp/baton-test-cluster-{os.getpid()}")  # short: Ray's socket paths are limited
    c = local_cluster.up(2, cpus_per_node=1, object_store_bytes=128 << 20, directory=directory, timeout_s=120)
    try:
        yield c, directory, tmp_path_factory.mktemp("shared")
    finally:
        local_cluster.down(directory)
        assert not local_cluster._cluster_pids(c.processes_root), "`baton cluster down` left processes behind"
        shutil.rmtree(directory, ignore_errors=True)


def _run_overrides(shared: Path, name: str, *extra: str) -> list[str]:
    return ["preset=smoke", "cluster.nnodes=2", "cluster.devices_per_node=1", "trainer.save_every=1",
            f"cluster.shared_dir={shared}", f"trainer.experiment_name={name}", *extra]


def _job_ids(cluster_dir: Path) -> list[str]:
    res = _baton(cluster_dir, "jobs", "list", timeout=60)
    assert res.returncode == 0, res.stderr
    return [line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip()]


def _complete_checkpoint(run: Path) -> Path:
    root = run / "checkpoints"
    target = root / (root / "latest").read_text().strip()
    assert not target.name.endswith(".tmp")
    for rel in ("trainer_state.json", "actor/model.safetensors", "actor/optimizer_dcp/.metadata",
                "actor/rng_state"):
        assert (target / rel).exists(), f"{target} lacks {rel}"
    return target


def test_local_cluster_nodes_are_separate_ray_nodes_on_loopback(cluster):
    c, _, _ = cluster
    nodes = local_cluster.alive_nodes(c)
    assert len({n.node_id for n in nodes}) == 2
    assert {n.node_ip for n in nodes} == {"127.0.0.1"}
    assert all(n.resources_total.get("CPU") == 1 for n in nodes)
    import psutil

    pids = local_cluster._cluster_pids(c.processes_root)
    for proc in list(pids):
        try:
            pids |= {child.pid for child in psutil.Process(proc).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    wide = [(conn.pid, conn.laddr) for conn in psutil.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids and conn.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert not wide, f"cluster processes listen beyond loopback: {wide}"


def test_submit_follow_runs_on_two_nodes_and_writes_to_the_shared_dir(cluster):
    c, directory, shared = cluster
    res = _baton(directory, "submit", "--follow", "--job-id", "baton-two-nodes", *_run_overrides(shared, "two"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "job baton-two-nodes: SUCCEEDED" in res.stdout
    run = shared / "outputs" / "two"
    placement = json.loads((run / "placement.json").read_text())
    actor_nodes = [rank["node_id"] for rank in placement["actor"]]
    assert len(actor_nodes) == 2 and len(set(actor_nodes)) == 2, placement
    assert set(actor_nodes) == {n.node_id for n in local_cluster.alive_nodes(c)}
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2
    assert json.loads((_complete_checkpoint(run) / "trainer_state.json").read_text())["step"] == 2
    status = _baton(directory, "jobs", "status", "baton-two-nodes", timeout=60)
    assert status.returncode == 0 and "baton-two-nodes: SUCCEEDED" in status.stdout


def test_a_bad_override_fails_submit_before_any_job_is_created(cluster):
    _, directory, shared = cluster
    before = _job_ids(directory)
    res = _baton(directory, "submit", *_run_overrides(shared, "bad", "actor.no_such_key=1"), timeout=60)
    assert res.returncode == 2
    assert "actor.no_such_key" in res.stderr and "job:" not in res.stdout
    res = _baton(directory, "submit", *_run_overrides(shared, "bad", "cluster.shared_dir=relative/dir"), timeout=60)
    assert res.returncode == 2 and "cluster.shared_dir" in res.stderr
    assert _job_ids(directory) == before


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _leftovers(c: local_cluster.LocalCluster) -> tuple[list, list]:
    from ray.util.state import list_actors, list_placement_groups

    actors = [a for a in list_actors(address=c.dashboard, filters=[("state", "=", "ALIVE")], timeout=10)
              if a.class_name in ("WorkerHost", "RolloutHost")]
    groups = [g for g in list_placement_groups(address=c.dashboard, timeout=10)
              if g.state != "REMOVED" and (g.name or "").startswith("baton-")]
    return actors, groups


def _start_long_run(directory: Path, shared: Path, job_id: str, name: str) -> Path:
    """Submit a 2000-step job (no --follow) and return its run dir once its first checkpoint exists."""
    run = shared / "outputs" / name
    res = _baton(directory, "submit", "--job-id", job_id, *_run_overrides(shared, name, "trainer.total_steps=2000"),
                 timeout=60)
    assert res.returncode == 0, res.stderr
    _wait_for(lambda: (run / "checkpoints" / "latest").is_file(), 180, "the first checkpoint")
    return run


def test_jobs_stop_ends_the_run_quickly_and_cleanly(cluster):
    c, directory, shared = cluster
    run = _start_long_run(directory, shared, "baton-stop", "stopped")
    start = time.monotonic()
    res = _baton(directory, "jobs", "stop", "baton-stop", "--wait", "30", timeout=60)
    elapsed = time.monotonic() - start
    assert res.returncode == 0 and "baton-stop: STOPPED" in res.stdout, res.stdout + res.stderr
    assert elapsed < 30, f"stop took {elapsed:.1f}s"
    _wait_for(lambda: _leftovers(c) == ([], []), 20, "Baton's actors and placement groups to go")
    _complete_checkpoint(run)


def test_a_killed_worker_node_fails_the_job_naming_role_rank_and_node(cluster):
    c, directory, shared = cluster
    run = _start_long_run(directory, shared, "baton-node-lost", "node-lost")
    victim = next(n.node_id for n in local_cluster.alive_nodes(c) if n.node_name == "baton-node-1")
    start = time.monotonic()
    local_cluster.kill_node(1, directory)

    def ended() -> str | None:
        out = _baton(directory, "jobs", "status", "baton-node-lost", timeout=60).stdout
        return out if re.search(r": (FAILED|SUCCEEDED|STOPPED)", out) else None

    status = _wait_for(ended, 60, "the job to fail after its node was killed", poll_s=1.0)
    assert "FAILED" in status, status
    assert time.monotonic() - start < 60
    logs = _baton(directory, "jobs", "logs", "baton-node-lost", timeout=60).stdout
    final = [line for line in logs.splitlines() if line.startswith("baton: ")]
    assert final, logs[-3000:]
    assert re.search(r"(actor|ref) rank [01] on node " + victim, final[-1]), final[-1]
    _complete_checkpoint(run)
