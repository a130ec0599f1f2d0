"""Rule rewards on hand-written cases, the reward registry and the batch helper."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from orchestrator.rewards import get_reward_fn, list_rewards, register_reward, score_batch
from orchestrator.rewards import registry as reward_registry
from orchestrator.rewards import rule_rewards
from orchestrator.rewards.rule_rewards import answer_format, combined, exact_answer, extract_answer, math_verify

EOS = "</s>"


@pytest.mark.parametrize(
    "text, eos, expected",
    [
        ("85", EOS, "85"),
        ("  85 \n", EOS, "85"),
        ("85</s>", EOS, "85"),
        ("85 </s>99</s>", EOS, "85"),
        ("</s>85", EOS, ""),
        ("85</s>", None, "85</s>"),  # None: the caller already cut at EOS
    ],
)
def test_extract_answer(text, eos, expected):
    assert extract_answer(text, eos_token=eos) == expected


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("85", "85", 1.0),
        ("86", "85", 0.0),
        ("85 \n", "85", 1.0),  # trailing whitespace
        (" 85", " 85 ", 1.0),  # ground truth is stripped too
        ("85</s>", "85", 1.0),
        ("85</s>junk after eos", "85", 1.0),
        ("8</s>5", "85", 0.0),
        ("85 is the answer", "85", 0.0),
        ("085", "85", 0.0),  # exact means exact, no numeric normalisation
        ("-13</s>", "-13", 1.0),
        ("13", "-13", 0.0),
        ("", "85", 0.0),
        ("</s>", "85", 0.0),
    ],
)
def test_exact_answer(response, truth, expected):
    assert exact_answer(response, truth, eos_token=EOS) == expected


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("7+8=15;3+4+1=8;#85</s>", "85", 1.0),
        ("#85", "85", 1.0),
        ("#8#85 ", "85", 1.0),  # the last marker counts
        ("#85#8", "85", 0.0),
        ("85", "85", 0.0),  # no marker, no answer
        ("-:10-2=8;4-1-1=2;#-28</s>", "-28", 1.0),
        ("#85</s>#86", "85", 1.0),  # text after EOS is not the answer
        ("#", "85", 0.0),
    ],
)
def test_final_answer(response, truth, expected):
    from orchestrator.rewards.rule_rewards import final_answer

    assert final_answer(response, truth, eos_token=EOS) == expected


def test_exact_answer_without_eos_cut_keeps_the_marker():
    assert exact_answer("85</s>", "85", eos_token=None) == 0.0


@pytest.mark.parametrize(
    "response, expected",
    [
        ("85", 1.0),
        ("-13", 1.0),
        (" 85 \n", 1.0),
        ("85</s>junk", 1.0),
        ("007", 1.0),  # well formed, even if not the canonical answer
        ("is 85", 0.5),
        ("85+1", 0.5),
        ("- 5", 0.5),
        ("8 5", 0.5),
        ("", 0.0),
        ("abc", 0.0),
        ("</s>85", 0.0),  # nothing before EOS
        ("-", 0.0),
    ],
)
def test_answer_format(response, expected):
    # ground truth must not matter for format
    assert answer_format(response, "12345", eos_token=EOS) == expected


@pytest.mark.parametrize(
    "response, expected",
    [("85</s>", 1.0), ("84", 0.1), ("answer 85", 0.05), ("oops", 0.0), ("85 ", 1.0)],
)
def test_combined(response, expected):
    score = combined(response, "85", eos_token=EOS, exact_weight=0.9, format_weight=0.1)
    assert score == pytest.approx(expected)


def test_combined_weights_are_required():
    with pytest.raises(TypeError, match="exact_weight"):
        combined("85", "85", eos_token=EOS, format_weight=0.1)


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("85", "85", 1.0),
        ("the answer is 85</s>", "85", 1.0),
        ("\\boxed{85}", "85", 1.0),
        ("1/2", "0.5", 1.0),
        ("-13", "-13", 1.0),
        ("86", "85", 0.0),
        ("85</s>86", "86", 0.0),  # text after EOS is ignored
        ("no number here", "85", 0.0),  # parse failure
        ("", "85", 0.0),
    ],
)
def test_math_verify(response, truth, expected):
    assert math_verify(response, truth, eos_token=EOS, timeout_seconds=5) == expected


def test_math_verify_timeout_scores_zero(monkeypatch):
    from math_verify.errors import TimeoutException

    def hang(*args, **kwargs):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(rule_rewards, "mv_parse", hang)
    assert math_verify("85", "85", eos_token=EOS, timeout_seconds=1) == 0.0


def test_math_verify_works_off_the_main_thread():
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.append(math_verify("85", "85", eos_token=EOS, timeout_seconds=5)))
    worker.start()
    worker.join(timeout=30)
    assert out == [1.0]


def test_math_verify_rejects_bad_timeout():
    with pytest.raises(ValueError, match="timeout_seconds"):
        math_verify("85", "85", eos_token=EOS, timeout_seconds=0)


# ---------------------------------------------------------------- registry


def test_builtins_registered_by_name():
    assert {"exact_answer", "final_answer", "answer_format", "combined", "math_verify"} <= set(list_rewards())
    assert get_reward_fn("exact_answer") is exact_answer
    assert get_reward_fn("math_verify") is math_verify


def test_typo_lists_known_names():
    with pytest.raises(ValueError) as excinfo:
        get_reward_fn("exact_anwser")
    message = str(excinfo.value)
    assert "unknown reward 'exact_anwser'" in message
    assert "did you mean 'exact_answer'" in message
    for name in ("answer_format", "combined", "exact_answer", "math_verify"):
        assert repr(name) in message


def test_register_custom_and_duplicate():
    name = "test_length_reward"
    try:

        @register_reward(name)
        def length(response_text: str, ground_truth: str, **kwargs) -> float:
            return float(len(response_text))

        assert get_reward_fn(name) is length
        with pytest.raises(ValueError, match="already registered"):
            register_reward(name)(length)
    finally:
        reward_registry._REWARDS.pop(name, None)


# ---------------------------------------------------------------- score_batch


def test_score_batch_values_and_dtype():
    responses = np.array(["85</s>", "84</s>", "x", " 7 "], dtype=object)
    truths = np.array(["85", "85", "1", "7"], dtype=object)
    scores = score_batch("combined", responses, truths, eos_token=EOS, exact_weight=0.9, format_weight=0.1)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    np.testing.assert_allclose(scores, [1.0, 0.1, 0.0, 1.0], rtol=1e-6)


def test_score_batch_ignores_extra_context_and_needs_eos():
    scores = score_batch("exact_answer", ["85"], ["85"], eos_token=EOS, prompt="37+48=")
    assert scores.tolist() == [1.0]
    with pytest.raises(TypeError, match="eos_token"):
        score_batch("exact_answer", ["85"], ["85"])


def test_score_batch_length_mismatch():
    with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
        score_batch("exact_answer", ["1", "2"], ["1"], eos_token=EOS)


def test_score_batch_empty():
    scores = score_batch("exact_answer", [], [], eos_token=EOS)
    assert scores.shape == (0,) and scores.dtype == np.float32
