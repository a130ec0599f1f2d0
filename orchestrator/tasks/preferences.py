"""Preference pairs (prompt, chosen, rejected) for reward-model training: generated from a
verifiable task, or read from a user's parquet.

Why generate them: a task with exact answers gives preferences for free (the task's solution
beats the same response ending in a wrong answer), so `baton rm` runs on the built-in task with
no labelled data. The wrong answer is a *plausible* one (off by one, off by ten, one digit
changed), so the reward model must look at the arithmetic, not at the answer's shape: length,
sign and the response's format (worked or not) match the chosen one.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow.parquet as pq

PAIR_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")
PAIRS_VERSION = 1  # bump when generated pairs change, so cached files are not reused
PERTURBATIONS: tuple[str, ...] = ("off_by_one", "off_by_ten", "digit_change")


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible integer answer different from `answer` (itself an integer string, e.g. "-28")."""
    value = int(answer)
    kind = rng.choice(PERTURBATIONS)
    if kind == "off_by_one":
        return str(value + rng.choice((-1, 1)))
    if kind == "off_by_ten":
        return str(value + rng.choice((-10, 10)))
    digits = list(str(abs(value)))
    pos = rng.randrange(len(digits))
    lowest = 1 if pos == 0 and len(digits) > 1 else 0  # no leading zero: "07" is not an integer answer
    digits[pos] = rng.choice([d for d in "0123456789"[lowest:] if d != digits[pos]])
    changed = int("".join(digits)) * (-1 if value < 0 else 1)
    return str(changed) if changed != value else str(value + 1)  # -0 == 0: fall back to off by one


def replace_final_answer(response: str, answer: str, replacement: str) -> str:
    """`response` with its final answer swapped: the answer ends a worked solution ("7+8=15;...;#85")
    or is the whole response ("85"), so a rejected response keeps the chosen one's format."""
    if not response.endswith(answer):
        raise ValueError(f"solution {response!r} does not end with its answer {answer!r}")
    return response[: len(response) - len(answer)] + replacement


def make_preference_pairs(prompts: Sequence[str], answers: Sequence[str], solutions: Sequence[str], *,
                          seed: int) -> pd.DataFrame:
    """One pair per prompt: chosen = the task's solution, rejected = the same with wrong_answer() as its
    final answer; deterministic by seed."""
    rng = random.Random(seed)
    answers = [str(a).strip() for a in answers]
    solutions = [str(s).strip() for s in solutions]
    rejected = [replace_final_answer(s, a, wrong_answer(a, rng)) for s, a in zip(solutions, answers)]
    return pd.DataFrame({"prompt": list(prompts), "chosen": solutions, "rejected": rejected},
                        columns=list(PAIR_COLUMNS))


def write_task_preferences(task_file: str | Path, out_file: str | Path, *, prompt_key: str, answer_key: str,
                           solution_key: str, seed: int) -> Path:
    """Pairs for every row of a task parquet, written atomically to `out_file` (skipped when present)."""
    out = Path(out_file)
    if out.is_file():
        return out
    data = read_columns(Path(task_file), list(dict.fromkeys([prompt_key, answer_key, solution_key])))
    frame = make_preference_pairs(data[prompt_key], data[answer_key], data[solution_key], seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    return out


def read_columns(path: Path, columns: list[str]) -> dict[str, list[Any]]:
    """The named columns of one parquet file; a missing file or column raises naming both."""
    if not path.is_file():
        raise FileNotFoundError(f"file '{path}' does not exist")
    available = pq.read_schema(path).names
    missing = [c for c in columns if c not in available]
    if missing:
        raise KeyError(f"file '{path}' has no column '{missing[0]}' (its columns: {', '.join(available)})")
    table = pq.read_table(path, columns=columns)
    return {c: table.column(c).to_pylist() for c in columns}


def load_preference_pairs(path: str | Path, *, prompt_key: str, chosen_key: str,
                          rejected_key: str) -> list[dict[str, str]]:
    """Rows {"prompt", "chosen", "rejected"} of one parquet file; non-string cells raise naming file, column, row."""
    keys = {"prompt": prompt_key, "chosen": chosen_key, "rejected": rejected_key}
    data = read_columns(Path(path), list(dict.fromkeys(keys.values())))
    rows = []
    for i in range(len(data[prompt_key])):
        row = {}
        for name, column in keys.items():
            value = data[column][i]
            if isinstance(value, int) and not isinstance(value, bool) and name != "prompt":
                value = str(value)
            if not isinstance(value, str):
                raise TypeError(f"file '{path}' row {i}: column '{column}' must hold strings, got {value!r}")
            row[name] = value
        rows.append(row)
    return rows
