"""Verify: a correction counts as verified only with the gold answer AND past every quality gate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lema.checker import Checker
from lema.config import CheckerSettings
from lema.records import CorrectedAttempt, Correction, Question, ReasoningPath
from lema.stages.verify import verify_corrections

QUESTION = Question.create(
    "Tom has 3 boxes with 8 pencils in each. He gives away 5. How many are left?", "19", "gsm8k", "t:1"
)
WRONG = "Step 1: Tom has 3 + 8 = 11 pencils.\nStep 2: He has 11 - 5 = 6 left.\nThe answer is 6."


def _corrected(solution: str, step: int | None = 1) -> CorrectedAttempt:
    path = ReasoningPath(
        id="p-1", question_id=QUESTION.id, model="m", sample_index=0, prompt_version="v", text=WRONG, answer="6"
    )
    correction = Correction(
        id=f"c-{abs(hash(solution))}",
        path_id=path.id,
        question_id=QUESTION.id,
        incorrect_step=step,
        explanation="x",
        corrected_solution=solution,
        answer="19",
        corrector_model="m",
        prompt_version="v",
    )
    return CorrectedAttempt(question=QUESTION, path=path, correction=correction)


@pytest.fixture(scope="module")
def checker() -> Iterator[Checker]:
    with Checker(CheckerSettings(workers=1)) as shared:
        yield shared


GOOD = "Step 1: Tom has 3 * 8 = 24 pencils.\nStep 2: He has 24 - 5 = 19 left.\nThe answer is 19."


@pytest.mark.parametrize(
    ("solution", "step", "show_gold", "reason"),
    [
        (GOOD, 1, True, None),
        ("Step 2: He has 24 - 5 = 19 left.\nThe answer is 19.", 2, True, None),  # restarts at the named step
        ("Step 1: Tom has 3 + 8 = 11 pencils.\nStep 2: He has 24 - 5 = 19 left.\nThe answer is 19.", 2, True, None),
        (GOOD, 2, True, "not_at_named_step"),  # names step 2 but rewrites step 1
        (
            "Step 1: Tom has 3 + 8 = 11 pencils.\nStep 2: He has 11 - 5 = 6 left.\nThe answer is 19.",
            2,
            True,
            "not_at_named_step",
        ),  # the named step copied unchanged
        ("He has 24 - 5 = 19 left. The answer is 19.", 1, True, "not_at_named_step"),  # no steps at all
        (
            "Step 1: Tom has 3 * 8 = 24 pencils.\nStep 2: He has 24 - 5 = 18 left.\nThe answer is 19.",
            1,
            True,
            "arithmetic_error",
        ),
        ("Step 1: 3 x 8 = 25.\nStep 2: 25 - 6 = 19.\nThe answer is 19.", 1, False, "arithmetic_error"),
        ("Step 1: 19 is a number.\nThe answer is 19.", 1, True, "restates_hint"),
        ("Step 1: 19 is a number.\nThe answer is 19.", 1, False, None),  # no hint shown: nothing to restate
        (
            "Step 1: Tom has 3 * 8 = 24 pencils.\nStep 2: He has 24 - 5 = 20 left.\nThe answer is 20.",
            1,
            True,
            "wrong_answer",
        ),
    ],
)
def test_each_gate_drops_with_its_reason(
    checker: Checker, solution: str, step: int, show_gold: bool, reason: str | None
) -> None:
    verified, drops = verify_corrections([_corrected(solution, step)], checker, show_gold=show_gold)
    if reason is None:
        assert len(verified) == 1 and verified[0].correction.verified and drops == []
    else:
        assert verified == [] and [(drop.stage, drop.reason) for drop in drops] == [("verify", reason)]


@pytest.mark.parametrize(
    ("statement", "right"),
    [
        ("10 / 3 = 3.33", True),  # rounded to the digits shown
        ("2 / 3 = 0.66", True),  # truncated to the digits shown
        ("10 / 3 = 3.4", False),
        ("7 / 2 = 3", False),
        ("$5 + $3 = $8", True),
        ("1,000 + 200 = 1,200", True),
        ("2 + 3 * 4 = 14", True),
        ("2 + 3 * 4 = 20", False),
        ("-3 + 5 = 2", True),
        ("3 x 4 = 13", False),
        ("2^3 + 1 = 9", True),  # a power is not checked: the statement is not between plain numbers
        ("3 + 4 = 7 * 2", True),  # a chain that goes on is not one statement
    ],
)
def test_arithmetic_statements(checker: Checker, statement: str, right: bool) -> None:
    solution = f"Step 1: Tom has 3 * 8 = 24 pencils; {statement}.\nStep 2: He has 24 - 5 = 19 left.\nThe answer is 19."
    verified, drops = verify_corrections([_corrected(solution)], checker)
    assert bool(verified) is right, drops
