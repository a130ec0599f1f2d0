"""Prompts from parquet to left-padded token Batches, one epoch-shuffled batch per step."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from orchestrator.config.errors import ConfigError
from orchestrator.tasks.dataset import load_prompt_dataset
from orchestrator.tasks.registry import get_task
from workers.batch import Batch


def task_files(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The configured parquet files, or the task's own generated split (cached by its parameters)."""
    if cfg.data.train_files:
        return list(cfg.data.train_files), list(cfg.data.val_files or cfg.data.train_files)
    params = dict(cfg.task.params)
    digest = hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:10]
    out = Path(cfg.trainer.cache_dir) / "data" / f"{cfg.task.name}-{digest}"
    if not (out / "train.parquet").is_file() or not (out / "test.parquet").is_file():
        get_task(cfg.task.name).write_data(out, **params)
    return [str(out / "train.parquet")], [str(out / "test.parquet")]


def load_rows(files: list[str], cfg: DictConfig, tokenizer: PreTrainedTokenizerBase,
              extra_keys: tuple[str, ...] = (), *, key: str = "data.train_files") -> list[dict[str, Any]]:
    """Rows of every file; a file that cannot be used fails as a ConfigError naming `key[i]`, file and row."""
    rows: list[dict[str, Any]] = []
    for i, file in enumerate(files):
        try:
            loaded = load_prompt_dataset([file], cfg.data.prompt_key, cfg.data.answer_key, extra_keys=extra_keys,
                                         tokenizer=tokenizer, max_prompt_len=cfg.data.max_prompt_length,
                                         on_overlong=cfg.data.on_overlong)
        except (ValueError, KeyError, TypeError, OSError, pa.ArrowException) as err:
            raise ConfigError(f"{key}[{i}]", _reason(err, file)) from None
        if not loaded:
            raise ConfigError(f"{key}[{i}]", f"'{file}' has no usable rows (empty, or every prompt was dropped "
                                            "by data.on_overlong=drop)")
        rows.extend(loaded)
    return rows


def _reason(err: BaseException, file: str) -> str:
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err).splitlines()[0]
    if isinstance(err, pa.ArrowException):
        return f"'{file}' is not a readable parquet file ({text})"
    return text


def load_train_val_rows(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[list[dict], list[dict]]:
    """Both splits, checked before any worker starts: readable, representable, enough rows for one step."""
    train_files, val_files = task_files(cfg)
    val_key = "data.val_files" if cfg.data.val_files else "data.train_files"
    train = load_rows(train_files, cfg, tokenizer)
    val = load_rows(val_files, cfg, tokenizer, key=val_key)
    if len(train) < cfg.data.train_batch_size:
        raise ConfigError("data.train_batch_size", f"{cfg.data.train_batch_size} prompts per step, but "
                          f"data.train_files hold only {len(train)} usable prompts")
    return train, val


def prompts_to_batch(rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, uid_prefix: str) -> Batch:
    """Left-padded prompt ids (the rollout contract) plus uid / ground truth / raw text per row."""
    ids = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    return Batch.from_dict(
        {"input_ids": input_ids, "attention_mask": mask},
        non_tensors={
            "uid": [f"{uid_prefix}-{r['row']}" for r in rows],
            "ground_truth": [r["ground_truth"] for r in rows],
            "prompt_text": [r["prompt"] for r in rows],
        },
    )


class PromptStream:
    """Endless shuffled passes over the training rows; resumable from (epoch, offset)."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, seed: int, shuffle: bool):
        if len(rows) < batch_size:
            raise ValueError(f"data: {len(rows)} training prompts is fewer than data.train_batch_size={batch_size}")
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.epoch, self.offset = 0, 0

    def _order(self) -> np.ndarray:
        n = len(self.rows)
        return np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)

    def next_rows(self) -> list[dict[str, Any]]:
        if self.offset + self.batch_size > len(self.rows):
            self.epoch, self.offset = self.epoch + 1, 0
        order = self._order()
        picked = [self.rows[i] for i in order[self.offset:self.offset + self.batch_size]]
        self.offset += self.batch_size
        return picked

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            yield self.next_rows()
