"""Read prompt datasets (parquet) into plain rows the driver can batch.

Built-in tasks and user exports (e.g. GSM8K saved as parquet with a prompt column
and an answer column) go through this one loader. Every problem it can detect is
raised here, naming the file, column and row, because the same mistake found later
inside a Ray actor surfaces as a far less readable error.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from orchestrator.tokenizer import lost_characters

logger = logging.getLogger(__name__)

OnOverlong = Literal["error", "drop"]


def _read_columns(path: Path, columns: list[str]) -> dict[str, list[Any]]:
    """The requested columns of one parquet file as Python lists."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    available = pq.read_schema(path).names
    for column in columns:
        if column not in available:
            raise KeyError(f"dataset file {path} has no column {column!r}; its columns are {available}")
    table = pq.read_table(path, columns=columns)
    return {column: table.column(column).to_pylist() for column in columns}


def _as_text(value: Any, *, path: Path, column: str, row: int, allow_int: bool) -> str:
    """Strings pass; integers become strings where allowed (numeric answers); anything else fails."""
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    kind = "a string or an integer" if allow_int else "a string"
    raise TypeError(f"dataset file {path} row {row}: column {column!r} must hold {kind}, got {value!r}")


def load_prompt_dataset(
    files: Sequence[str | Path],
    prompt_key: str,
    answer_key: str,
    *,
    extra_keys: Sequence[str],
    tokenizer: PreTrainedTokenizerBase | None,
    max_prompt_len: int | None,
    on_overlong: OnOverlong,
) -> list[dict[str, Any]]:
    """Rows `{"prompt", "ground_truth", *extra_keys, "source", "row"}` from parquet files, in order.

    The prompt and answer columns are renamed to `prompt` / `ground_truth` so the driver
    never needs to know a dataset's column names; `extra_keys` (e.g. `["solution"]`
    for SFT) are copied as they are; `source` / `row` say where each row came from.
    If `max_prompt_len` is set, prompts are measured as `tokenizer(prompt)` counts them;
    longer ones raise (naming file and row) or are dropped with a warning, per `on_overlong`.
    """
    if not files:
        raise ValueError("load_prompt_dataset: no files given")
    if on_overlong not in ("error", "drop"):
        raise ValueError(f"on_overlong must be 'error' or 'drop', got {on_overlong!r}")
    if max_prompt_len is not None and tokenizer is None:
        raise ValueError("max_prompt_len is set but no tokenizer was given to measure prompts")
    reserved = {"prompt", "ground_truth", "source", "row"}
    clashes = sorted(reserved.intersection(extra_keys) - {prompt_key, answer_key})
    if clashes:
        raise ValueError(f"extra_keys {clashes} would overwrite the loader's own output keys {sorted(reserved)}")

    rows: list[dict[str, Any]] = []
    for file in files:
        path = Path(file)
        columns = list(dict.fromkeys([prompt_key, answer_key, *extra_keys]))
        data = _read_columns(path, columns)
        prompts = [
            _as_text(p, path=path, column=prompt_key, row=i, allow_int=False) for i, p in enumerate(data[prompt_key])
        ]
        answers = [
            _as_text(a, path=path, column=answer_key, row=i, allow_int=True) for i, a in enumerate(data[answer_key])
        ]
        if tokenizer is not None:
            _check_representable(prompts, path, prompt_key, tokenizer)
            for key in extra_keys:
                if all(isinstance(v, str) for v in data[key]):
                    _check_representable(data[key], path, key, tokenizer)
        keep = _within_length(prompts, path, tokenizer, max_prompt_len, on_overlong)
        for i in keep:
            row: dict[str, Any] = {key: data[key][i] for key in extra_keys}
            row.update(prompt=prompts[i], ground_truth=answers[i], source=str(path), row=i)
            rows.append(row)
    return rows


def _check_representable(texts: list[str], path: Path, column: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Text the tokenizer would drop or turn into <unk> is an error naming file, column and row, never silent."""
    for i, lost in enumerate(lost_characters(tokenizer, texts)):
        if lost:
            shown = ", ".join(repr(c) for c in dict.fromkeys(lost))
            bad = sum(1 for x in lost_characters(tokenizer, texts[i:]) if x)
            raise ValueError(
                f"dataset file {path} row {i}: column {column!r} has characters the tokenizer cannot represent "
                f"({shown}); it would drop them or turn them into <unk> ({bad} such rows from here on)")


def _within_length(
    prompts: list[str],
    path: Path,
    tokenizer: PreTrainedTokenizerBase | None,
    max_prompt_len: int | None,
    on_overlong: OnOverlong,
) -> list[int]:
    """Indices of prompts that fit; raises on the first overlong one when `on_overlong == "error"`."""
    if max_prompt_len is None or not prompts:
        return list(range(len(prompts)))
    assert tokenizer is not None
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    overlong = [i for i, n in enumerate(lengths) if n > max_prompt_len]
    if overlong and on_overlong == "error":
        i = overlong[0]
        raise ValueError(
            f"dataset file {path} row {i}: prompt is {lengths[i]} tokens, over max_prompt_len={max_prompt_len} "
            f"({len(overlong)} such rows in this file; set on_overlong=drop to skip them)"
        )
    if overlong:
        logger.warning("dropped %d of %d prompts over %d tokens from %s", len(overlong), len(prompts), max_prompt_len, path)
    dropped = set(overlong)
    return [i for i in range(len(prompts)) if i not in dropped]
