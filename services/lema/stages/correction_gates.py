"""Quality gates a correction must pass, besides reaching the gold answer, before it counts as verified.

A corrector that was shown the gold answer can reach it without correcting anything ("Step 2: 26 is a number. The
answer is 26."), so a right final answer alone does not make a correction worth training on. Each gate names what it
found wrong; the verify stage turns that into a counted drop.

- `not_at_named_step`: LEMA's format keeps the steps before the incorrect step k and restarts at step k. The corrected
  solution must either start at 'Step k', or copy steps 1..k-1 unchanged and then give a changed 'Step k'.
- `arithmetic_error`: every explicit statement 'a op b = c' between plain numbers must be right (a shown result may
  be rounded to the digits it shows).
- `restates_hint` (only when the corrector saw the gold): a solution whose only number is the answer itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from lema.checker.numbers import parse_number
from lema.records import CorrectedAttempt

_STEP = re.compile(r"^[ \t*#>-]*step\s*(\d+)\s*[:.)]", re.IGNORECASE | re.MULTILINE)
_NUMBER = r"\$?\d[\d,]*(?:\.\d+)?"
_OPERATOR = r"[-+*/×÷]|(?<=\s)x(?=\s)"
# 'a op b (op c …) = c', not inside a longer expression: no operator, bracket, power or word right before or after.
_ARITHMETIC = re.compile(
    rf"(?<![\w.,)^*/+×÷=-])(?<!\^\s)(?P<left>-?{_NUMBER}(?:\s*(?:{_OPERATOR})\s*{_NUMBER})+)\s*=\s*"
    rf"(?P<right>-?{_NUMBER})(?![\w%(^]|\.\d|\s*(?:[-+*/×÷^(]|x\s))"
)
_TOKEN = re.compile(rf"{_NUMBER}|{_OPERATOR}")
_OPERATORS = frozenset("+-*/×÷x")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class GateFailure:
    reason: str
    detail: str


def first_gate_failure(item: CorrectedAttempt, show_gold: bool) -> GateFailure | None:
    """The first gate the correction fails, or None when it passes them all."""
    correction = item.correction
    for failure in (
        _step_failure(item.path.text, correction.corrected_solution, correction.incorrect_step),
        _arithmetic_failure(correction.corrected_solution),
        _restated_hint(correction.corrected_solution, correction.answer) if show_gold else None,
    ):
        if failure is not None:
            return failure
    return None


def _steps(solution: str) -> list[tuple[int, str]]:
    """(number, first line) of each 'Step N:' of a solution: the answer line after the last step is no part of it."""
    return [
        (int(mark.group(1)), " ".join(solution[mark.end() :].partition("\n")[0].split()))
        for mark in _STEP.finditer(solution)
    ]


def _step_failure(wrong: str, corrected: str, step: int | None) -> GateFailure | None:
    original = _steps(wrong)
    if step is None or not original:
        return None  # a solution without numbered steps names no step to restart at
    fixed = _steps(corrected)
    if not fixed:
        return GateFailure("not_at_named_step", f"names step {step} but has no numbered steps")
    if fixed[0][0] == step:
        return None
    kept = dict(original)
    for number, text in fixed:
        if number == step:
            if text == kept.get(step):
                return GateFailure("not_at_named_step", f"step {step} is copied unchanged")
            return None
        if number > step or text != kept.get(number):
            break
    return GateFailure("not_at_named_step", f"does not keep the steps before step {step} and restart there")


def _arithmetic_failure(solution: str) -> GateFailure | None:
    for statement in _ARITHMETIC.finditer(solution):
        value = _evaluate(statement["left"])
        shown = parse_number(statement["right"].replace("$", ""))
        if value is None or shown is None:
            continue
        if not _shows(value, shown.value, len(statement["right"].partition(".")[2])):
            return GateFailure("arithmetic_error", statement.group(0))
    return None


def _shows(value: Fraction, shown: Fraction, decimals: int) -> bool:
    """Whether `shown` is `value`, rounded or (with decimals shown) truncated to `decimals` places ('10 / 3 = 3.33')."""
    scale = 10**decimals
    magnitude, sign = abs(value) * scale, (1 if value >= 0 else -1)
    rounded = sign * math.floor(magnitude + Fraction(1, 2))  # half away from zero: 3.5 -> 4
    return shown * scale in (rounded, sign * math.floor(magnitude) if decimals > 0 else rounded)


def _evaluate(expression: str) -> Fraction | None:
    """'3 * 8 - 5' with the usual precedence; None on a division by zero or a number that is not plain."""
    tokens = _TOKEN.findall(expression)
    sign = 1
    if tokens and tokens[0] == "-":
        sign, tokens = -1, tokens[1:]
    terms: list[Fraction] = []
    operator = "+"
    for token in tokens:
        if token in _OPERATORS:
            operator = token
            continue
        number = parse_number(token.replace("$", ""))
        if number is None:
            return None
        value = number.value
        if not terms:
            terms.append(sign * value)
        elif operator in ("+", "-"):
            terms.append(value if operator == "+" else -value)
        elif operator in ("*", "×", "x"):
            terms[-1] *= value
        elif value == 0:
            return None
        else:
            terms[-1] /= value
    return sum(terms, Fraction(0)) if terms else None


def _restated_hint(solution: str, answer: str | None) -> GateFailure | None:
    """With the gold shown, a solution that computes nothing: no number in it but the answer and step labels."""
    text = _STEP.sub(" ", solution)
    answer_digits = set(_DIGITS.findall(answer or ""))
    others = [digits for digits in _DIGITS.findall(text) if digits not in answer_digits]
    if others:
        return None
    return GateFailure("restates_hint", " ".join(solution.split())[:200])
