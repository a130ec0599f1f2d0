"""Preference data for `baton rm` (no Ray): generated pairs, bad files rejected before Ray starts,
the one-row-per-pair layout, and the Bradley-Terry loss as a sum of micro-batch contributions."""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pandas as pd
import pytest
import torch

from e2e_helpers import tiny_model
from orchestrator.config import ConfigError, compose_config, validate_config
from orchestrator.tasks.preferences import make_preference_pairs, wrong_answer
from orchestrator.trainer.pair_data import load_pairs, pair_batch, tokenize_pairs
from workers.batch import Batch
from workers.engines import LossNorm
from workers.losses.bradley_terry import bradley_terry_loss
from workers.roles.rm_trainer import interleave_pairs


def test_wrong_answers_are_plausible_integers_and_deterministic():
    answers = [str(a) for a in range(-120, 121)] * 3
    rng = random.Random(7)
    wrong = [wrong_answer(a, rng) for a in answers]
    again = random.Random(7)
    assert wrong == [wrong_answer(a, again) for a in answers]  # same seed, same answers
    assert all(w != a and str(int(w)) == w for a, w in zip(answers, wrong))  # wrong, and a canonical integer
    deltas = {abs(int(w) - int(a)) for a, w in zip(answers, wrong)}
    assert {1, 10} <= deltas and len(deltas) > 4  # off by one, off by ten and digit changes all occur
    assert sum(len(w.lstrip("-")) == len(a.lstrip("-")) for a, w in zip(answers, wrong)) > 0.8 * len(answers)


def test_generated_pairs_keep_the_solution_format_and_depend_only_on_the_seed():
    prompts, answers = ["1+2=", "9-40=", "55+55="], ["3", "-31", "110"]
    solutions = ["1+2=3;#3", "#-31", "110"]  # worked, answer-only, bare
    a = make_preference_pairs(prompts, answers, solutions, seed=3)
    assert a.equals(make_preference_pairs(prompts, answers, solutions, seed=3))
    assert list(a.columns) == ["prompt", "chosen", "rejected"] and list(a["chosen"]) == solutions
    for chosen, rejected, answer, prefix in zip(a["chosen"], a["rejected"], answers, ["1+2=3;#", "#", ""]):
        assert rejected.startswith(prefix) and rejected[len(prefix):] != answer
        assert str(int(rejected[len(prefix):])) == rejected[len(prefix):]
    seeds = {tuple(make_preference_pairs(prompts, answers, solutions, seed=s)["rejected"]) for s in range(10)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="does not end with its answer"):
        make_preference_pairs(["1+1="], ["2"], ["#3"], seed=0)


def _rm_cfg(tmp_path, *overrides: str):
    model = tiny_model(tmp_path / "model")
    return validate_config(compose_config([f"trainer.cache_dir={tmp_path / 'cache'}", f"rm.base_model_path={model}",
                                           "task.params.n_train=40", "task.params.n_test=8", *overrides]),
                           check_files=False)


def test_missing_file_or_column_names_the_key_file_and_column(tmp_path):
    with pytest.raises(ConfigError, match=r"rm.train_files\[0\]: file '/no/such.parquet' does not exist"):
        load_pairs(_rm_cfg(tmp_path, "rm.train_files=[/no/such.parquet]"))
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"prompt": ["1+1="], "chosen": ["2"], "worse": ["3"]}).to_parquet(bad)
    with pytest.raises(ConfigError, match=rf"rm.train_files\[0\]: file '{bad}' has no column 'rejected'"):
        load_pairs(_rm_cfg(tmp_path, f"rm.train_files=[{bad}]"))
    rows = load_pairs(_rm_cfg(tmp_path, f"rm.train_files=[{bad}]", "rm.rejected_key=worse"))
    assert rows == [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "source": str(bad), "row": 0}]


def test_task_pairs_are_generated_into_the_cache(tmp_path):
    cfg = _rm_cfg(tmp_path)
    rows = load_pairs(cfg)
    assert len(rows) == 40 and all(r["chosen"] != r["rejected"] for r in rows)
    task = pd.read_parquet(sorted((tmp_path / "cache" / "data").glob("*/train.parquet"))[0])
    assert [r["chosen"] for r in rows] == list(task["solution"])  # the SFT targets' format
    assert rows[0]["source"].startswith(str(tmp_path / "cache" / "data")) and rows == load_pairs(cfg)


@pytest.mark.parametrize("overrides,key", [
    (["rm.micro_batch_size=5"], "rm.micro_batch_size"),
    (["rm.batch_size=3"], "rm.batch_size"),
    (["rm.steps=0"], "rm.steps"),
    (["rm.optim.schedule=linear"], "rm.optim.schedule"),
])
def test_bad_rm_sizes_are_rejected_with_their_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides), check_files=False)
    assert err.value.key == key


def test_baton_rm_rejects_bad_input_before_ray_starts(tmp_path):
    from orchestrator.rm_training import train_reward_model

    with pytest.raises(ConfigError, match=r"rm.base_model_path: '.*none' is not a HF checkpoint directory"):
        train_reward_model(_rm_cfg(tmp_path, f"rm.base_model_path={tmp_path / 'none'}"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "rm", f"rm.base_model_path={tmp_path / 'model'}",
                          "rm.train_files=[/no/pairs.parquet]"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    assert "config error at rm.train_files[0]: file '/no/pairs.parquet' does not exist" in res.stderr
    assert "Ray" not in res.stdout + res.stderr


def test_pair_rows_stack_into_adjacent_chosen_rejected_rows(tmp_path):
    from orchestrator.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_model(tmp_path / "model"))
    rows = [{"prompt": "7+8=", "chosen": "15", "rejected": "16", "source": "x", "row": 0},
            {"prompt": "10-1=", "chosen": "9", "rejected": "109", "source": "x", "row": 1}]
    with pytest.raises(ConfigError, match="x row 1: prompt \\+ response is 9 tokens, over"):
        tokenize_pairs(rows, tok, max_length=8)
    rows_ = interleave_pairs(pair_batch(tokenize_pairs(rows, tok, max_length=64), tok.pad_token_id))
    texts = [tok.decode(ids[mask.bool()]) for ids, mask in zip(rows_["input_ids"], rows_["attention_mask"])]
    assert texts == ["7+8=15</s>", "7+8=16</s>", "10-1=9</s>", "10-1=109</s>"]
    assert rows_["response_mask"].sum(-1).tolist() == [3, 3, 2, 4]
    # left-padded prompts, so the position ids of every row start at 0 on its first token
    first = rows_["attention_mask"].argmax(-1)
    assert rows_["position_ids"][torch.arange(4), first].tolist() == [0, 0, 0, 0]


def test_bradley_terry_contributions_sum_to_the_mean_pair_loss():
    scores = torch.tensor([2.0, 1.0, 0.0, 3.0, -1.0, -1.5])  # pairs (2, 1), (0, 3), (-1, -1.5)
    mask = torch.ones(6, 2)
    norm = LossNorm(global_tokens=12.0, global_seqs=6.0, dp_size=1)
    parts = [bradley_terry_loss({"scores": scores[i:i + 2]}, Batch.from_dict({"response_mask": mask[i:i + 2]}),
                                norm)[0] for i in (0, 2, 4)]
    expect = sum(math.log1p(math.exp(-m)) for m in (1.0, -3.0, 0.5)) / 3
    assert sum(float(p) for p in parts) == pytest.approx(expect)
    _, metrics = bradley_terry_loss({"scores": scores}, Batch.from_dict({"response_mask": mask}), norm)
    assert float(metrics["rm/accuracy"]) == pytest.approx(2 / 3)
