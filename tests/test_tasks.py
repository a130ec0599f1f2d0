"""The arithmetic task's files, the task registry and the parquet prompt loader."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from orchestrator.assets.char_tokenizer import build_char_tokenizer
from orchestrator.tasks import get_task, list_tasks, load_prompt_dataset, register_task
from orchestrator.tasks.arithmetic import write_arithmetic_dataset
from orchestrator.tasks.registry import TaskSpec
from orchestrator.rewards.rule_rewards import final_answer

PROBLEM = re.compile(r"^(\d+)([+\-*])(\d+)=$")
ARGS = dict(n_train=300, n_test=50, seed=3, min_digits=1, max_digits=3, operations=["+", "-", "*"])


def _write(tmp_path, **override):
    kwargs = {**ARGS, **override}
    paths = write_arithmetic_dataset(tmp_path, **kwargs)
    return pd.read_parquet(paths["train"]), pd.read_parquet(paths["test"])


def _recompute(prompt: str) -> tuple[int, str, int, str]:
    match = PROBLEM.match(prompt)
    assert match, f"malformed prompt {prompt!r}"
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return a, op, b, str(value)


# ---------------------------------------------------------------- arithmetic files


def test_files_columns_and_sizes(tmp_path):
    paths = write_arithmetic_dataset(tmp_path, **ARGS)
    assert set(paths) == {"train", "test"}
    assert paths["train"].name == "train.parquet" and paths["test"].name == "test.parquet"
    train, test = pd.read_parquet(paths["train"]), pd.read_parquet(paths["test"])
    assert list(train.columns) == ["prompt", "ground_truth", "solution"] == list(test.columns)
    assert len(train) == 300 and len(test) == 50


def test_answers_are_correct_and_operands_in_range(tmp_path):
    train, test = _write(tmp_path, min_digits=2, max_digits=3)
    ops_seen = set()
    for frame in (train, test):
        for prompt, truth, solution in frame.itertuples(index=False):
            a, op, b, value = _recompute(prompt)
            assert truth == value and final_answer(solution, value, eos_token=None) == 1.0
            assert 2 <= len(str(a)) <= 3 and 2 <= len(str(b)) <= 3
            ops_seen.add(op)
    assert ops_seen == {"+", "-", "*"}
    assert (train["ground_truth"].str.startswith("-")).any()  # subtraction can go negative


def _check_worked_steps(solution: str) -> None:
    """Every column step of a worked solution is true arithmetic."""
    for step in solution.split(";")[:-1]:
        left, right = step.removeprefix("-:").split("=")
        assert eval(left) == int(right), (step, solution)  # noqa: S307 - digits and +/- only


def test_worked_fraction_mixes_worked_and_direct_solutions(tmp_path):
    train, _ = _write(tmp_path, n_train=2000, operations=["+", "-"], worked_fraction=0.3)
    worked = ~train["solution"].str.startswith("#")
    assert 0.25 < worked.mean() < 0.35
    for prompt, truth, solution in train[worked].itertuples(index=False):
        assert truth == _recompute(prompt)[3] and final_answer(solution, truth, eos_token=None) == 1.0
        _check_worked_steps(solution)
    direct = train[~worked]
    assert (direct["solution"] == "#" + direct["ground_truth"]).all()
    all_worked, _ = _write(tmp_path, operations=["+", "-"], worked_fraction=1.0)
    assert not all_worked["solution"].str.startswith("#").any()


@pytest.mark.parametrize("problem, solution", [
    ("37+48=", "7+8=15;3+4+1=8;#85"),
    ("63-48=", "13-8=5;6-4-1=1;#15"),
    ("12-40=", "-:10-2=8;4-1-1=2;#-28"),
    ("100-1=", "10-1=9;10-0-1=9;1-0-1=0;#99"),
    ("7-7=", "7-7=0;#0"),
])
def test_worked_solution_text(problem, solution):
    from orchestrator.tasks.worked_solutions import solution_text

    a, op, b, value = _recompute(problem)
    assert solution_text(a, op, b, int(value), worked=True) == solution
    assert solution_text(a, op, b, int(value), worked=False) == f"#{value}"
    assert solution_text(a, "*", b, a * b, worked=True) == f"#{a * b}"  # no worked form for *


def test_only_requested_operations(tmp_path):
    train, _ = _write(tmp_path, operations=["*"])
    assert all(_recompute(p)[1] == "*" for p in train["prompt"])


def test_deterministic_for_a_seed(tmp_path):
    a_train, a_test = _write(tmp_path / "a")
    b_train, b_test = _write(tmp_path / "b")
    c_train, _ = _write(tmp_path / "c", seed=4)
    pd.testing.assert_frame_equal(a_train, b_train)
    pd.testing.assert_frame_equal(a_test, b_test)
    assert not a_train.equals(c_train)


def test_train_test_disjoint_and_no_duplicates(tmp_path):
    train, test = _write(tmp_path)
    assert not set(train["prompt"]) & set(test["prompt"])
    assert train["prompt"].is_unique and test["prompt"].is_unique


def test_exhausting_the_problem_space(tmp_path):
    # one-digit addition has exactly 10 * 10 distinct problems
    train, test = _write(tmp_path, n_train=90, n_test=10, min_digits=1, max_digits=1, operations=["+"])
    assert len(set(train["prompt"]) | set(test["prompt"])) == 100
    with pytest.raises(ValueError, match="only 100 exist"):
        _write(tmp_path, n_train=91, n_test=10, min_digits=1, max_digits=1, operations=["+"])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"operations": ["/"]}, "unknown operations"),
        ({"operations": []}, "empty"),
        ({"min_digits": 3, "max_digits": 2}, "min_digits"),
        ({"min_digits": 0}, "min_digits"),
        ({"worked_fraction": 1.5}, "worked_fraction"),
    ],
)
def test_bad_arguments(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        _write(tmp_path, **override)


# ---------------------------------------------------------------- registry


def test_arithmetic_is_registered(tmp_path):
    spec = get_task("arithmetic")
    assert "arithmetic" in list_tasks()
    assert (spec.prompt_key, spec.answer_key, spec.solution_key) == ("prompt", "ground_truth", "solution")
    from orchestrator.rewards import list_rewards

    assert spec.default_reward in list_rewards()
    paths = spec.write_data(tmp_path, **ARGS)
    assert spec.solution_key in pd.read_parquet(paths["train"]).columns


def test_task_typo_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'arithmetc' \(did you mean 'arithmetic'\?\).*\['arithmetic'"):
        get_task("arithmetc")


def test_duplicate_task_rejected():
    spec = get_task("arithmetic")
    with pytest.raises(ValueError, match="already registered"):
        register_task(spec)
    assert isinstance(spec, TaskSpec)


# ---------------------------------------------------------------- load_prompt_dataset


def _load(files, **override):
    kwargs = dict(
        prompt_key="prompt",
        answer_key="ground_truth",
        extra_keys=[],
        tokenizer=None,
        max_prompt_len=None,
        on_overlong="error",
    )
    kwargs.update(override)
    return load_prompt_dataset(files, kwargs.pop("prompt_key"), kwargs.pop("answer_key"), **kwargs)


def test_loads_files_in_order_with_provenance(tmp_path):
    paths = write_arithmetic_dataset(tmp_path, **ARGS)
    rows = _load([str(paths["test"]), paths["train"]], extra_keys=["solution"])
    test = pd.read_parquet(paths["test"])
    assert len(rows) == 350
    assert rows[0]["prompt"] == test["prompt"][0] and rows[0]["ground_truth"] == test["ground_truth"][0]
    assert rows[0]["solution"] == test["solution"][0]
    assert rows[50]["source"] == str(paths["train"]) and rows[50]["row"] == 0
    assert set(rows[0]) == {"prompt", "ground_truth", "solution", "source", "row"}


def test_user_columns_are_renamed_and_int_answers_become_text(tmp_path):
    path = tmp_path / "gsm8k.parquet"
    pd.DataFrame({"question": ["how many? ", "and now?"], "answer": [72, -3]}).to_parquet(path)
    rows = _load([path], prompt_key="question", answer_key="answer")
    assert [(r["prompt"], r["ground_truth"]) for r in rows] == [("how many? ", "72"), ("and now?", "-3")]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        _load([tmp_path / "nope.parquet"])


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"question": ["1+1="], "ground_truth": ["2"]}).to_parquet(path)
    with pytest.raises(KeyError, match=r"data\.parquet has no column 'prompt'.*question"):
        _load([path])
    with pytest.raises(KeyError, match=r"no column 'solution'"):
        _load([path], prompt_key="question", extra_keys=["solution"])


def test_null_prompt_names_row(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"prompt": ["1+1=", None], "ground_truth": ["2", "3"]}).to_parquet(path)
    with pytest.raises(TypeError, match=r"data\.parquet row 1: column 'prompt'"):
        _load([path])


@pytest.fixture()
def overlong_file(tmp_path):
    path = tmp_path / "long.parquet"
    prompts = ["1+1=", "22+22=", "1234567+7654321=", "3+3="]
    pd.DataFrame({"prompt": prompts, "ground_truth": ["2", "44", "8888888", "6"]}).to_parquet(path)
    return path


def test_overlong_prompt_error_names_file_and_row(overlong_file):
    tok = build_char_tokenizer(model_max_length=64)
    with pytest.raises(ValueError, match=r"long\.parquet row 2: prompt is 16 tokens, over max_prompt_len=10"):
        _load([overlong_file], tokenizer=tok, max_prompt_len=10)
    assert len(_load([overlong_file], tokenizer=tok, max_prompt_len=16)) == 4  # the limit is inclusive


def test_overlong_prompt_drop(overlong_file):
    tok = build_char_tokenizer(model_max_length=64)
    rows = _load([overlong_file], tokenizer=tok, max_prompt_len=10, on_overlong="drop")
    assert [r["prompt"] for r in rows] == ["1+1=", "22+22=", "3+3="]
    assert [r["row"] for r in rows] == [0, 1, 3]  # provenance survives the drop


@pytest.mark.parametrize(
    "override, error",
    [
        ({"max_prompt_len": 10}, "no tokenizer"),
        ({"on_overlong": "truncate"}, "on_overlong"),
        ({"extra_keys": ["source"]}, "overwrite"),
    ],
)
def test_bad_loader_arguments(overlong_file, override, error):
    with pytest.raises(ValueError, match=error):
        _load([overlong_file], **override)


def test_no_files():
    with pytest.raises(ValueError, match="no files"):
        _load([])
