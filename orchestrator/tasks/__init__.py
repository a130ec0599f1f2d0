"""Prompt datasets: the built-in arithmetic task, the task registry and the parquet loader."""
from orchestrator.tasks.dataset import load_prompt_dataset
from orchestrator.tasks.registry import TaskSpec, get_task, list_tasks, register_task

__all__ = ["TaskSpec", "get_task", "list_tasks", "load_prompt_dataset", "register_task"]
