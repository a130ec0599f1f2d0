"""The built-in verifiable task: multi-digit integer arithmetic, generated on the fly.

Why this task: its answers are checkable by a rule (no reward model), a tiny char
model can learn it on CPU in minutes, and difficulty is one knob (`max_digits`).

Row shape (the same columns a user export such as GSM8K must provide):
  prompt        "37+48="                  what the policy is conditioned on
  ground_truth  "85"                      what the rule reward compares against
  solution      "7+8=15;3+4+1=8;#85"      the SFT warm-start target (the trainer appends EOS itself)
Subtraction may give negative answers ("12-40=" -> "-28"). The answer follows the last "#"
(see worked_solutions). A `worked_fraction` of rows show their column working, the rest
give the answer alone ("#85"): a teacher who shows its work only sometimes, so the warm
start can do both and RL has a better strategy to find.
"""
from __future__ import annotations

import operator
import random
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from orchestrator.tasks.worked_solutions import solution_text

OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}
COLUMNS: tuple[str, ...] = ("prompt", "ground_truth", "solution")


def format_problem(a: int, op: str, b: int) -> str:
    """The prompt text for one problem, e.g. `format_problem(37, "+", 48) == "37+48="`."""
    return f"{a}{op}{b}="


def solve(a: int, op: str, b: int) -> str:
    """The exact answer as the string the reward compares against."""
    return str(OPERATIONS[op](a, b))


def _numbers_with_digits(n_digits: int) -> tuple[int, int]:
    """Inclusive range of non-negative integers written with exactly `n_digits` digits."""
    low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    return low, 10**n_digits - 1


def _count_distinct(min_digits: int, max_digits: int, n_ops: int) -> int:
    """How many distinct problems exist, so an impossible request fails instead of looping."""
    operands = sum(hi - lo + 1 for lo, hi in map(_numbers_with_digits, range(min_digits, max_digits + 1)))
    return n_ops * operands * operands


def _validate(n_train: int, n_test: int, min_digits: int, max_digits: int, operations: Sequence[str]) -> None:
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if not operations:
        raise ValueError("operations is empty")
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operations {unknown}; known: {sorted(OPERATIONS)}")
    if len(set(operations)) != len(operations):
        raise ValueError(f"operations has duplicates: {list(operations)}")
    capacity = _count_distinct(min_digits, max_digits, len(operations))
    if n_train + n_test > capacity:
        raise ValueError(
            f"asked for {n_train + n_test} distinct problems but only {capacity} exist "
            f"for digits {min_digits}..{max_digits} and operations {list(operations)}"
        )


def sample_problems(
    n: int, *, seed: int, min_digits: int, max_digits: int, operations: Sequence[str]
) -> list[tuple[int, str, int]]:
    """`n` distinct (a, op, b) triples; deterministic for a seed.

    Digit counts are drawn uniformly per operand, then the value uniformly within that
    digit count, so short and long operands are equally common.
    """
    _validate(n, 0, min_digits, max_digits, operations)
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    problems: list[tuple[int, str, int]] = []
    while len(problems) < n:
        a = rng.randint(*_numbers_with_digits(rng.randint(min_digits, max_digits)))
        b = rng.randint(*_numbers_with_digits(rng.randint(min_digits, max_digits)))
        problem = (a, rng.choice(list(operations)), b)
        if problem not in seen:
            seen.add(problem)
            problems.append(problem)
    return problems


def _to_frame(problems: list[tuple[int, str, int]], worked_fraction: float, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    solutions = [solution_text(a, op, b, OPERATIONS[op](a, b), worked=rng.random() < worked_fraction)
                 for a, op, b in problems]
    return pd.DataFrame(
        {
            "prompt": [format_problem(a, op, b) for a, op, b in problems],
            "ground_truth": [solve(a, op, b) for a, op, b in problems],
            "solution": solutions,
        },
        columns=list(COLUMNS),
    )


def write_arithmetic_dataset(
    out_dir: str | Path,
    *,
    n_train: int,
    n_test: int,
    seed: int,
    min_digits: int,
    max_digits: int,
    operations: Sequence[str],
    worked_fraction: float = 1.0,
) -> dict[str, Path]:
    """Write disjoint `train.parquet` / `test.parquet`; returns {"train": path, "test": path}.

    Disjoint by construction: one pool of distinct problems is drawn, the first
    `n_test` go to test. Same arguments -> identical files.
    """
    _validate(n_train, n_test, min_digits, max_digits, operations)
    if not 0.0 <= worked_fraction <= 1.0:
        raise ValueError(f"worked_fraction must be in [0, 1], got {worked_fraction}")
    problems = sample_problems(
        n_train + n_test, seed=seed, min_digits=min_digits, max_digits=max_digits, operations=operations
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.parquet", "test": out / "test.parquet"}
    _to_frame(problems[n_test:], worked_fraction, seed + 1).to_parquet(paths["train"], index=False)
    _to_frame(problems[:n_test], worked_fraction, seed + 2).to_parquet(paths["test"], index=False)
    return paths
