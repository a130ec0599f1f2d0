"""Atomic step checkpoints: write into `step_N.tmp/`, rename to `step_N/`, then repoint `latest`.

A crash at any moment leaves either the previous `latest` or the new one, never a half-written
directory under that name; stale `.tmp` directories are removed at the next save. The trainer
checkpoints only steps that passed its divergence guards, so `latest` is always the newest
healthy checkpoint and pruning (which never touches the newest) never deletes it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    if not (target / "trainer_state.json").is_file():
        raise FileNotFoundError(f"checkpoint pointer {pointer} names {target}, which has no trainer_state.json")
    return target


def checkpoint_step(root: Path) -> int:
    """Step of the latest checkpoint under `root`, 0 when there is none."""
    latest = latest_checkpoint(root)
    return int(load_trainer_state(latest)["step"]) if latest is not None else 0


def save_checkpoint(root: Path, step: int, write_workers: Callable[[Path], None], trainer_state: dict[str, Any],
                    keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    tmp.mkdir()
    write_workers(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = root / "latest.tmp-pointer"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / "latest")
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, current: Path) -> None:
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")),
                   key=lambda p: int(p.name.split("_")[1]))
    for old in steps[:-keep] if keep > 0 else []:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def verify_views(directory: Path, views: list[dict[str, int]], role: str, nodes: list[dict] | None) -> None:
    """Every file any rank saw in `directory` is here too, the same size: else the storage is not shared.

    Called before the checkpoint is finalised, so `latest` never names one whose shards live on
    another machine's disk.
    """
    for rank, view in enumerate(views):
        for rel, size in sorted(view.items()):
            here = directory / rel
            if not here.is_file() or here.stat().st_size != size:
                node = nodes[rank] if nodes and rank < len(nodes) else None
                where = f" on node {node['node_id']} ({node['ip']})" if node else ""
                raise RuntimeError(
                    f"checkpoint {directory}: {role} rank {rank}{where} wrote {rel} ({size} bytes) but the driver "
                    f"{'sees a different size' if here.is_file() else 'cannot see it'}: trainer.output_dir is not on "
                    "storage every node shares; set cluster.shared_dir to a directory every node mounts")


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer_state.json").read_text())
