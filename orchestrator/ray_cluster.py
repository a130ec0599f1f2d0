"""Start or join the Ray cluster the driver runs on, with the settings this project needs on every machine."""
from __future__ import annotations

import json
import os

import ray

from orchestrator import stop_signal

# Keep a local cluster on loopback, never ask for auth tokens, never phone home.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, object_store_bytes: int,
             env_vars: dict[str, str] | None = None) -> None:
    """Join `address` (a running cluster, e.g. under `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    runtime_env = {"env_vars": {k: v for k, v in (env_vars or {}).items() if k not in _job_env_keys()}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        stop_signal.install()
        return
    os.environ.pop("RAY_ADDRESS", None)
    _keep_on_loopback()
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=object_store_bytes,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    stop_signal.install()


def _job_env_keys() -> set[str]:
    """Env vars the Ray Job this driver runs in (`baton submit`) already gives every worker.

    Ray refuses to merge a job's runtime env with the driver's when both set the same key, and the
    job's values (and its working dir on PYTHONPATH) are the ones meant to win.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    runtime_env = json.loads(raw).get("runtime_env") or {}
    return set(runtime_env.get("env_vars") or {}) | {"PYTHONPATH"}


def _keep_on_loopback() -> None:
    """What RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does, also when ray was imported before the variable was set.

    Ray reads the variable once, at import, into `ray_constants.ENABLE_RAY_CLUSTER`; with it off, a local
    cluster's node address is 127.0.0.1 and every socket bound to the node address (Ray's and Baton's)
    stays on loopback. Without it Ray picks the machine's outward address.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
