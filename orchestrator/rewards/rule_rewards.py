"""Rule rewards: verifiable scores computed from the response text and the ground truth.

Every reward first takes "the answer": the response up to the first `eos_token`
(the rollout keeps the stop token, and whatever a decode left after it is not part
of the answer), with surrounding whitespace stripped. Pass `eos_token=None` when the
text was already cut at EOS (e.g. decoded with `skip_special_tokens=True`).
Unknown keyword arguments are accepted and ignored, so the driver can hand the
same per-sample context to any reward.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any

from math_verify import parse as mv_parse
from math_verify.errors import TimeoutException
from math_verify import verify as mv_verify

from orchestrator.rewards.registry import register_reward

logger = logging.getLogger(__name__)

_INTEGER = re.compile(r"-?\d+")


def extract_answer(response_text: str, *, eos_token: str | None) -> str:
    """The response up to the first `eos_token` (if given), stripped of surrounding whitespace."""
    if eos_token:
        response_text = response_text.split(eos_token, 1)[0]
    return response_text.strip()


@register_reward("exact_answer")
def exact_answer(response_text: str, ground_truth: str, *, eos_token: str | None, **_: Any) -> float:
    """1.0 iff the answer equals the ground truth (both stripped) character for character."""
    return float(extract_answer(response_text, eos_token=eos_token) == ground_truth.strip())


@register_reward("final_answer")
def final_answer(response_text: str, ground_truth: str, *, eos_token: str | None, marker: str = "#", **_: Any) -> float:
    """1.0 iff the text after the last `marker` equals the ground truth (GSM8K-style "... #### 72").

    For responses that show their working before the answer, e.g. "7+8=15;3+4+1=8;#85".
    A response without the marker scores 0.0.
    """
    answer = extract_answer(response_text, eos_token=eos_token)
    if not marker or marker not in answer:
        return 0.0
    return float(answer.rsplit(marker, 1)[1].strip() == ground_truth.strip())


@register_reward("answer_format")
def answer_format(response_text: str, ground_truth: str, *, eos_token: str | None, **_: Any) -> float:
    """How well-formed the answer is as an integer, ignoring whether it is right.

    1.0  the answer is exactly one integer (`-?\\d+`, e.g. "85", "-13", " 85 ")
    0.5  the answer contains an integer plus other text (e.g. "85+1", "is 85")
    0.0  the answer contains no digits (including the empty answer)
    """
    answer = extract_answer(response_text, eos_token=eos_token)
    if _INTEGER.fullmatch(answer):
        return 1.0
    if _INTEGER.search(answer):
        return 0.5
    return 0.0


@register_reward("combined")
def combined(
    response_text: str,
    ground_truth: str,
    *,
    eos_token: str | None,
    exact_weight: float,
    format_weight: float,
    **_: Any,
) -> float:
    """`exact_weight * exact_answer + format_weight * answer_format` (e.g. 0.9 / 0.1)."""
    exact = exact_answer(response_text, ground_truth, eos_token=eos_token)
    fmt = answer_format(response_text, ground_truth, eos_token=eos_token)
    return exact_weight * exact + format_weight * fmt


def _signal_timeout(timeout_seconds: int) -> int | None:
    """math-verify times out with signal.alarm, which works only on the main thread.

    Off the main thread it would raise instead of scoring, so there we run without
    its timeout (a caller that needs one there must bound the whole call itself).
    """
    if threading.current_thread() is threading.main_thread():
        return timeout_seconds
    return None


@register_reward("math_verify")
def math_verify(
    response_text: str, ground_truth: str, *, eos_token: str | None, timeout_seconds: int, **_: Any
) -> float:
    """1.0 iff math-verify finds the answer mathematically equal to the ground truth.

    Accepts free-form answers ("so the answer is $\\frac{1}{2}$" vs "0.5"); a parse
    failure, a timeout or any math-verify error scores 0.0 rather than crashing a step.
    """
    if not isinstance(timeout_seconds, int) or timeout_seconds < 1:
        raise ValueError(f"timeout_seconds must be an integer >= 1 (signal.alarm), got {timeout_seconds!r}")
    timeout = _signal_timeout(timeout_seconds)
    answer = extract_answer(response_text, eos_token=eos_token)
    try:
        gold = mv_parse(ground_truth, parsing_timeout=timeout)
        pred = mv_parse(answer, parsing_timeout=timeout)
        if not gold or not pred:
            return 0.0
        return float(mv_verify(gold, pred, timeout_seconds=timeout))
    # TimeoutException derives from BaseException, so it is named explicitly.
    except (Exception, TimeoutException):  # a failed check, not a crashed training step
        logger.debug("math_verify failed on answer %r vs %r", answer, ground_truth, exc_info=True)
        return 0.0
