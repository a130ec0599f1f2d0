"""A run directory belongs to one run.

Rerunning an experiment name without `trainer.resume=true` used to append to the old
`metrics.jsonl`, mix `summary.json` across runs and overwrite checkpoints. Now a directory
that already holds a run's outputs is left alone: the new run takes the first free
`<output_dir>-N` beside it and says so. With `trainer.resume=true` the run continues
in `output_dir` itself (from its latest checkpoint, or from the start if it has none).
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

log = logging.getLogger("baton.run_dir")

RUN_MARKERS = ("metrics.jsonl", "checkpoints", "summary.json")


def holds_a_run(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def claim_run_dir(cfg: DictConfig) -> Path:
    """The directory this run writes to, absolute (also set as cfg.trainer.output_dir); created, never shared."""
    wanted = Path(cfg.trainer.output_dir).absolute()  # every node and every worker must agree on the same path
    chosen = wanted
    if not cfg.trainer.resume:
        n = 1
        while holds_a_run(chosen):
            n += 1
            chosen = wanted.with_name(f"{wanted.name}-{n}")
        if chosen != wanted:
            print(f"baton: {wanted} holds an earlier run; this run writes to {chosen} "
                  "(trainer.resume=true continues the earlier one instead)")
    chosen.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.trainer.output_dir = str(chosen)
    return chosen
