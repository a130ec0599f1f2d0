"""Preference pairs for `baton rm`: from the configured parquet files or generated from the task,
checked and tokenized on the driver (so bad input fails before Ray starts), batched one row per pair."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from orchestrator.config.errors import ConfigError
from orchestrator.tasks.preferences import (PAIR_COLUMNS, PAIRS_VERSION, load_preference_pairs,
                                            write_task_preferences)
from orchestrator.tasks.registry import get_task
from orchestrator.trainer.data import task_files
from workers.batch import Batch

SIDES: tuple[str, ...] = ("chosen", "rejected")


def preference_files(cfg: DictConfig) -> list[str]:
    """rm.train_files, or pairs generated from the task's train split (its solutions) into the cache (by seed)."""
    if cfg.rm.train_files:
        return list(cfg.rm.train_files)
    task_train = Path(task_files(cfg)[0][0])
    out = task_train.parent / f"preferences-v{PAIRS_VERSION}-seed{cfg.trainer.seed}.parquet"
    try:
        write_task_preferences(task_train, out, prompt_key=cfg.data.prompt_key, answer_key=cfg.data.answer_key,
                               solution_key=get_task(cfg.task.name).solution_key, seed=cfg.trainer.seed)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise ConfigError("rm.train_files", f"is empty, so pairs are generated from {task_train}, which failed: "
                          f"{err.args[0] if err.args else err} (give a preference parquet instead)") from None
    return [str(out)]


def load_pairs(cfg: DictConfig) -> list[dict[str, Any]]:
    """Rows {"prompt", "chosen", "rejected", "source", "row"}; a bad file names its config key, file and column."""
    key = "rm.train_files"
    r = cfg.rm
    # generated pairs are written with the standard columns; rm.*_key name the columns of the user's files
    columns = (r.prompt_key, r.chosen_key, r.rejected_key) if r.train_files else PAIR_COLUMNS
    rows: list[dict[str, Any]] = []
    for i, file in enumerate(preference_files(cfg)):
        try:
            pairs = load_preference_pairs(file, prompt_key=columns[0], chosen_key=columns[1],
                                          rejected_key=columns[2])
        except (FileNotFoundError, KeyError, TypeError) as err:
            raise ConfigError(f"{key}[{i}]" if r.train_files else key, str(err.args[0])) from None
        rows += [{**p, "source": file, "row": n} for n, p in enumerate(pairs)]
    if not rows:
        raise ConfigError(key, "the preference files hold no pairs")
    return rows


def tokenize_pairs(rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                   max_length: int | None) -> list[dict[str, Any]]:
    """Token ids per pair: prompt, and each response followed by EOS (as a finished rollout ends)."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for r in rows:
        pair = {"prompt": ids(r["prompt"]), **{s: ids(r[s]) + eos for s in SIDES}}
        longest = len(pair["prompt"]) + max(len(pair[s]) for s in SIDES)
        if max_length is not None and longest > max_length:
            raise ConfigError("rm.train_files", f"{r['source']} row {r['row']}: prompt + response is {longest} "
                              f"tokens, over the model's max_position_embeddings={max_length}")
        out.append(pair)
    return out


def split_held_out(pairs: list[dict[str, Any]], n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded shuffle, the first n_val pairs held out."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def pair_batch(pairs: list[dict[str, Any]], pad_token_id: int) -> Batch:
    """One row per pair: `chosen_*` / `rejected_*` in the engines' layout, both sides padded to the same width
    ([left-padded prompt | right-padded response]) so a worker can stack them into adjacent rows."""
    width_p = max(len(p["prompt"]) for p in pairs)
    width_r = max(len(p[s]) for p in pairs for s in SIDES)
    tensors: dict[str, torch.Tensor] = {}
    for side in SIDES:
        ids = torch.full((len(pairs), width_p + width_r), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(pairs):
            prompt, response = p["prompt"], p[side]
            ids[i, width_p - len(prompt):width_p] = torch.tensor(prompt, dtype=torch.long)
            ids[i, width_p:width_p + len(response)] = torch.tensor(response, dtype=torch.long)
            mask[i, width_p - len(prompt):width_p + len(response)] = 1
        tensors.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask,
                        f"{side}_position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                        f"{side}_response_mask": mask[:, width_p:].clone()})
    return Batch.from_dict(tensors)
