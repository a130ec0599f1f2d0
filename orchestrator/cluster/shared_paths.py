"""Where a run's files go when its ranks live on several machines.

A relative `trainer.output_dir` used to resolve in each process's own working directory, which under
`ray job submit` is a per-node copy of the job's code: a checkpoint shard written by a rank on
another node landed in that node's copy while `latest` on the driver's node pointed at it. Now the
driver resolves every relative path once, to an absolute one under `cluster.shared_dir` (storage
every node mounts; the current directory when it is not set), before any worker starts.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf, open_dict

ROOT_KEYS = ("output_dir", "cache_dir")  # trainer.*: everything a run writes lives under one of these
# Every path a run reads or writes. Composition has already resolved interpolations, so model.path
# (${trainer.cache_dir}/warmstart/...) is a plain relative string here and is rewritten like the roots.
PATH_KEYS = ("trainer.output_dir", "trainer.cache_dir", "model.path", "critic.model_path", "reward.reward_model.path",
             "teacher.path", "sft.base_model_path", "sft.output_path", "rm.base_model_path", "rm.output_path")
PATH_LIST_KEYS = ("data.train_files", "data.val_files", "rm.train_files")


def is_loopback_address(address: str | None) -> bool:
    """A cluster on this machine: no address (Baton starts it) or a 127.0.0.1/localhost one, with or without
    a scheme (a GCS `host:port` or a job server `http://host:port`)."""
    if not address:
        return True
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def resolve_shared_paths(cfg: DictConfig) -> Path:
    """Make every relative path of the config absolute under the shared root; returns that root.

    The rule a user reads: relative paths are relative to `cluster.shared_dir`, or to the directory
    `baton` runs in when it is not set (as before).
    """
    base = Path(cfg.cluster.shared_dir) if cfg.cluster.shared_dir else Path.cwd()

    def absolute(value: str | None) -> str | None:
        return value if value is None or Path(value).is_absolute() else str((base / value).absolute())

    with open_dict(cfg):
        for key in PATH_KEYS:
            if OmegaConf.select(cfg, key, default=None) is not None:
                OmegaConf.update(cfg, key, absolute(OmegaConf.select(cfg, key)), merge=False)
        for key in PATH_LIST_KEYS:
            values = OmegaConf.select(cfg, key, default=None)
            if values is not None:
                OmegaConf.update(cfg, key, [absolute(v) for v in values], merge=False)
    return base
