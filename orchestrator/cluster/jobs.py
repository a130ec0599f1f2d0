"""`baton submit` and `baton jobs`: Baton runs as Ray Jobs on a cluster, through the Job Submission SDK.

The config is composed and validated here, on the submitting machine, before anything is sent, so
a typo fails in a second with the same message as `baton train` instead of after an upload and a
job start. The job's driver joins the cluster (`cluster.address=auto`) and writes under
`cluster.shared_dir`, which every node sees (a local cluster's default: this directory).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

from orchestrator.cluster.local_cluster import LocalCluster
from orchestrator.cluster.shared_paths import is_loopback_address

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
COMMANDS = ("train", "sft", "rm", "run-default")
# Never uploaded: environments, outputs, caches and VCS data are per machine (and large).
WORKING_DIR_EXCLUDES = [".venv", ".venv-peers", "outputs", ".git", "**/__pycache__", "*.pyc", ".pytest_cache",
                        ".hypothesis", ".whl", ".gl", "build", "*.egg-info"]
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH)", re.IGNORECASE)
REQUEST_TIMEOUT_S = 60.0


def default_address() -> str:
    """The job server: $BATON_JOB_ADDRESS, else the cluster `baton cluster up` started, else Ray's default."""
    if os.environ.get("BATON_JOB_ADDRESS"):
        return os.environ["BATON_JOB_ADDRESS"]
    local = LocalCluster.load()
    return local.dashboard if local is not None else DEFAULT_ADDRESS


def redacted(env: dict[str, str]) -> dict[str, str]:
    """Env vars as printed: values of names that look like credentials are hidden."""
    return {k: ("***" if SECRET_NAME.search(k) else v) for k, v in env.items()}


def client(address: str, timeout_s: float = REQUEST_TIMEOUT_S):
    """A Job Submission client whose every HTTP request is bounded (the SDK's own are not)."""
    from ray.job_submission import JobSubmissionClient

    class BoundedClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):  # noqa: ANN001, ANN202 - the SDK's signature
            kwargs.setdefault("timeout", timeout_s)
            return super()._do_request(method, endpoint, **kwargs)

    try:
        return BoundedClient(address)
    except Exception as err:  # noqa: BLE001 - connection refused, timeout, version check: all one message
        raise SystemExit(f"baton: cannot reach the Ray job server at {address}: {type(err).__name__}: {err}\n"
                         "  (`baton cluster up` starts a local one; --address or $BATON_JOB_ADDRESS names another)")


def parse_env(items: list[str]) -> dict[str, str]:
    """`--env K=V` sets a value; `--env K` forwards this shell's value of K."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise SystemExit(f"baton submit: --env {key}: not set in this shell")
            value = os.environ[key]
        env[key] = value
    return env


def job_overrides(overrides: list[str], address: str) -> list[str]:
    """What the job's driver runs with: join the cluster; on a local cluster, outputs under this directory."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    extra = []
    if "cluster.address" not in keys:  # a joined cluster's CPUs and object store are what `ray start` gave it
        extra += ["cluster.address=auto"] + [f"cluster.{k}=0" for k in ("local_num_cpus", "object_store_bytes")
                                             if f"cluster.{k}" not in keys]
    if "cluster.shared_dir" not in keys and is_loopback_address(address):
        extra.append(f"cluster.shared_dir={Path.cwd().absolute()}")
    return [*overrides, *extra]


def validate_locally(overrides: list[str]) -> None:
    """The same composition and checks as `baton train|sft|rm` (ConfigError on the first problem)."""
    from orchestrator.config import compose_config, validate_config

    validate_config(compose_config(overrides), check_files=False)


def submit(command: str, overrides: list[str], *, address: str, env: dict[str, str], working_dir: Path,
           follow: bool, follow_timeout_s: float, submission_id: str | None = None) -> int:
    full = job_overrides(overrides, address)
    validate_locally(full)
    if not is_loopback_address(address):
        print(f"baton submit: sending the job to {address} (not this machine)")
    runtime_env = {"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES,
                   "env_vars": {"TOKENIZERS_PARALLELISM": "false", **env}}
    entrypoint = " ".join(["python", "-m", "orchestrator.cli", command, *(shlex.quote(o) for o in full)])
    c = client(address)
    job_id = c.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                          metadata={"baton_command": command})
    print(f"job: {job_id}")
    print(f"  entrypoint: {entrypoint}")
    if env:
        print(f"  env: {redacted(env)}")
    print(f"  follow: baton jobs logs {job_id} --follow | status: baton jobs status {job_id} | "
          f"stop: baton jobs stop {job_id}")
    if not follow:
        return 0
    return follow_job(c, job_id, follow_timeout_s)


def follow_job(c, job_id: str, timeout_s: float, poll_s: float = 1.0) -> int:
    """Stream the job's log until it ends; exit status 0 only when it SUCCEEDED."""
    printed = 0
    deadline = time.monotonic() + timeout_s
    status = "PENDING"
    while True:
        status = str(c.get_job_status(job_id).value)
        logs = c.get_job_logs(job_id)
        if len(logs) > printed:
            sys.stdout.write(logs[printed:])
            sys.stdout.flush()
            printed = len(logs)
        if status in TERMINAL:
            break
        if time.monotonic() > deadline:
            print(f"baton: job {job_id} still {status} after {timeout_s:.0f}s; it keeps running "
                  f"(`baton jobs stop {job_id}` ends it)", file=sys.stderr)
            return 124
        time.sleep(poll_s)
    info = c.get_job_info(job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if info.message and status != "SUCCEEDED" else ""))
    return 0 if status == "SUCCEEDED" else 1


def stop_job(c, job_id: str, wait_s: float) -> str:
    """Ask the job to stop, then wait (bounded) until Ray reports it ended."""
    c.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    status = str(c.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(c.get_job_status(job_id).value)
    return status
