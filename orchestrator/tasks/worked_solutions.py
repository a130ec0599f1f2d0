"""Worked solutions for the arithmetic task: column arithmetic written out, least significant digit first.

Why: a ~3M-parameter char model cannot compute a carry it has not seen yet, so it learns
"37+48=85" slowly, but it learns each column step ("7+8=15", "3+4+1=8") and the final copy
quickly. The text after the last ANSWER_MARKER is the answer the reward checks.

    37+48=  ->  7+8=15;3+4+1=8;#85          (a "+1" is the carry into a column)
    63-48=  ->  13-8=5;6-4-1=1;#15          (a leading 1 is a borrowed ten, "-1" the borrow paid back)
    12-40=  ->  -:10-2=8;4-1-1=2;#-28       ("-:" = the result is negative, work out 40-12)
    37*4=   ->  #148                        (no worked form for *: the answer only)
"""
from __future__ import annotations

ANSWER_MARKER = "#"


def direct_solution(answer: int) -> str:
    return f"{ANSWER_MARKER}{answer}"


def _digits_lsb_first(n: int, width: int) -> list[int]:
    return [int(c) for c in str(n).zfill(width)[::-1]]


def _join(steps: list[str], answer: int) -> str:
    return ";".join(steps) + ";" + direct_solution(answer)


def worked_addition(a: int, b: int) -> str:
    """Column addition of two non-negative integers."""
    width = max(len(str(a)), len(str(b)))
    steps, carry = [], 0
    for x, y in zip(_digits_lsb_first(a, width), _digits_lsb_first(b, width)):
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return _join(steps, a + b)


def _column_subtraction_steps(a: int, b: int) -> list[str]:
    """Steps of a - b for a >= b >= 0."""
    width = len(str(a))
    steps, borrow = [], 0
    for x, y in zip(_digits_lsb_first(a, width), _digits_lsb_first(b, width)):
        top = x
        if x - borrow < y:
            top = x + 10
        steps.append(f"{top}-{y}{'-1' if borrow else ''}={top - y - borrow}")
        borrow = 1 if top > x else 0
    return steps


def worked_subtraction(a: int, b: int) -> str:
    """Column subtraction; a negative result is worked as b - a and marked "-:"."""
    if a >= b:
        return _join(_column_subtraction_steps(a, b), a - b)
    steps = _column_subtraction_steps(b, a)
    steps[0] = "-:" + steps[0]
    return _join(steps, a - b)


WORKED = {"+": worked_addition, "-": worked_subtraction}


def solution_text(a: int, op: str, b: int, answer: int, *, worked: bool) -> str:
    """The SFT target: worked when asked and the operation has a worked form, else the answer alone."""
    if worked and op in WORKED:
        return WORKED[op](a, b)
    return direct_solution(answer)
