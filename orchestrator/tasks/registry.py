"""Task registry: `task=<name>` in the Hydra config resolves to a `TaskSpec` here.

A task bundles what the driver must know about a dataset besides its files: how to
generate it (built-in synthetic tasks), which columns hold the prompt / ground truth /
SFT solution, and which rule reward scores it unless the config names another.
A user dataset (e.g. a GSM8K parquet export) needs no entry: the config points
`load_prompt_dataset` at its files and names a reward directly.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.tasks.arithmetic import write_arithmetic_dataset


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific the driver needs, so the trainer never branches on a task name."""

    name: str
    # write_data(out_dir, **task_config_kwargs) -> {"train": path, "test": path}
    write_data: Callable[..., dict[str, Path]]
    default_reward: str  # a name in orchestrator.rewards.registry
    prompt_key: str  # column with the prompt text
    answer_key: str  # column with the ground truth the reward compares against
    solution_key: str  # column with the SFT warm-start target (EOS appended by the trainer)
    description: str


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; a second task under the same name is an error, not a silent override."""
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by its config name; a typo lists the known names."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; known tasks: {sorted(_TASKS)}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_TASKS)


register_task(
    TaskSpec(
        name="arithmetic",
        write_data=write_arithmetic_dataset,
        default_reward="final_answer",
        prompt_key="prompt",
        answer_key="ground_truth",
        solution_key="solution",
        description="multi-digit integer + - * problems, e.g. '37+48=' -> '7+8=15;3+4+1=8;#85'",
    )
)
