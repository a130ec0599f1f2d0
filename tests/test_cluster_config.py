"""Cluster submission pieces that need no cluster: job overrides, shared paths, validation, images and locks."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from orchestrator.cluster.jobs import job_overrides, redacted
from orchestrator.cluster.shared_paths import is_loopback_address, resolve_shared_paths
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.trainer.checkpointing import verify_views

REPO = Path(__file__).resolve().parents[1]


def test_job_overrides_join_the_cluster_and_default_the_shared_dir_only_when_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = job_overrides(["preset=smoke"], "http://127.0.0.1:8265")
    assert local == ["preset=smoke", "cluster.address=auto", "cluster.local_num_cpus=0",
                     "cluster.object_store_bytes=0", f"cluster.shared_dir={tmp_path}"]
    remote = job_overrides(["preset=smoke", "cluster.address=10.0.0.1:6379"], "http://10.0.0.1:8265")
    assert remote == ["preset=smoke", "cluster.address=10.0.0.1:6379"]
    assert is_loopback_address("127.0.0.1:8265") and not is_loopback_address("http://head.example:8265")


def test_secret_looking_env_values_are_never_printed():
    shown = redacted({"WANDB_API_KEY": "abc", "HF_TOKEN": "t", "DB_PASSWORD": "p", "HF_HUB_OFFLINE": "1"})
    assert shown == {"WANDB_API_KEY": "***", "HF_TOKEN": "***", "DB_PASSWORD": "***", "HF_HUB_OFFLINE": "1"}


def test_a_remote_cluster_needs_shared_storage_for_relative_outputs():
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(["cluster=gpu", "model=hf", "model.path=/m"]), check_files=False)
    assert err.value.key == "trainer.output_dir" and "cluster.shared_dir" in str(err.value)
    validate_config(compose_config(["cluster=gpu", "model=hf", "model.path=/m", "cluster.shared_dir=/mnt/shared"]),
                    check_files=False)
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(["cluster.shared_dir=shared"]), check_files=False)
    assert err.value.key == "cluster.shared_dir"


def test_relative_paths_resolve_under_the_shared_dir(tmp_path):
    cfg = compose_config([f"cluster.shared_dir={tmp_path}", "trainer.experiment_name=x"])
    resolve_shared_paths(cfg)
    assert cfg.trainer.output_dir == str(tmp_path / "outputs" / "x")
    assert cfg.model.path == str(tmp_path / "outputs" / "cache" / "warmstart" / "arithmetic-tiny-qwen2")
    assert cfg.sft.output_path == cfg.model.path
    cfg = compose_config(["model.path=/abs/model"])
    resolve_shared_paths(cfg)
    assert cfg.model.path == "/abs/model" and cfg.trainer.output_dir == str(Path.cwd() / "outputs" / cfg.trainer.experiment_name)


def test_a_shard_the_driver_cannot_see_stops_the_checkpoint(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"1234")
    nodes = [{"node_id": "n0", "ip": "10.0.0.1"}, {"node_id": "n1", "ip": "10.0.0.2"}]
    verify_views(tmp_path, [{"model.safetensors": 4}, {"model.safetensors": 4}], "actor", nodes)
    with pytest.raises(RuntimeError) as err:
        verify_views(tmp_path, [{"model.safetensors": 4}, {"optim/__1_0.distcp": 7}], "actor", nodes)
    assert "actor rank 1 on node n1 (10.0.0.2) wrote optim/__1_0.distcp" in str(err.value)
    assert "cluster.shared_dir" in str(err.value)
    with pytest.raises(RuntimeError, match="different size"):
        verify_views(tmp_path, [{"model.safetensors": 5}], "actor", nodes)


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    res = subprocess.run([hadolint, "docker/Dockerfile.cpu", "docker/Dockerfile.gpu"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _lock_entries(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = line.split(" --hash=")
        req = Requirement(spec.strip())
        entries[canonicalize_name(req.name)] = (req, hashes)
    return entries


def test_gpu_lock_pins_every_package_with_hashes_and_satisfies_its_inputs():
    lock = _lock_entries(REPO / "requirements" / "gpu.lock")
    assert len(lock) > 100
    for name, (req, hashes) in lock.items():
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1, f"{name} is not pinned exactly: {req}"
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{name} has no hash"
    version = {name: next(iter(req.specifier)).version for name, (req, _) in lock.items()}
    for line in (REPO / "requirements" / "gpu.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            want = Requirement(line)
            name = canonicalize_name(want.name)
            assert name in version, f"gpu.lock lacks {want.name}"
            assert want.specifier.contains(version[name], prereleases=True), (want, version[name])
    cpu = {canonicalize_name(Requirement(l).name): l.split("==")[1] for l in (REPO / "requirements" / "cpu.lock").read_text().split()
           if "==" in l}
    assert version["ray"] == cpu["ray"], "the job client (cpu.lock) and the cluster image must run the same Ray"
    for extra in ("aiohttp-cors", "opencensus", "prometheus-client", "py-spy"):  # ray[default]: the job server
        assert extra in lock and extra in cpu


def _docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on this machine"
    res = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    return None if res.returncode == 0 else f"no Docker daemon reachable: {res.stderr.strip().splitlines()[-1]}"


@pytest.mark.slow
def test_cpu_image_builds_and_runs_the_smoke_job():
    reason = _docker_daemon()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(["docker", "build", "-f", "docker/Dockerfile.cpu", "-t", "baton:cpu-test", "."], cwd=REPO,
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    run = subprocess.run(["docker", "run", "--rm", "--shm-size=2g", "baton:cpu-test", "baton", "train", "preset=smoke"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"status\s+completed", run.stdout), run.stdout[-3000:]


def test_kuberay_manifest_and_slurm_script_are_well_formed_and_submit_through_baton():
    import yaml

    job = yaml.safe_load((REPO / "docker" / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    lock = _lock_entries(REPO / "requirements" / "gpu.lock")
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == next(iter(lock["ray"][0].specifier)).version
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert "baton submit --follow" in submitter["args"][0] and "cluster.shared_dir=" in submitter["args"][0]
    script = REPO / "docker" / "slurm-ray.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    assert "baton submit --follow" in script.read_text() and "--dashboard-host=127.0.0.1" in script.read_text()
