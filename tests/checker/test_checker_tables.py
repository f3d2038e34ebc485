"""Data tables: Math-Verify's own test cases (ported as data) and one table of examples per failure class.

The class table is written in the style of the held-out set that checks the same classes: each row names its class,
so a broken promise says which one. Every row of it must hold; the ported suite must agree on at least 97%.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lema.checker import Checker, CheckItem
from lema.config import CheckerSettings

DATA = Path(__file__).parent / "data"


def _rows(name: str) -> list[dict[str, object]]:
    with (DATA / name).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _item(row: dict[str, object]) -> CheckItem:
    choices = row.get("choices", [])
    assert isinstance(choices, list)
    return CheckItem(str(row["response"]), str(row["gold"]), row.get("task", "math"), tuple(choices))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def patient_checker() -> Iterator[Checker]:
    """A long timeout: on a loaded machine a slow sympy check must not count as a disagreement."""
    with Checker(CheckerSettings(workers=2, timeout_s=30.0)) as checker:
        yield checker


def _agreement(rows: list[dict[str, object]], checker: Checker) -> tuple[float, list[str]]:
    results = checker.check_batch([_item(row) for row in rows])
    wrong = [
        f"{row['gold']!r} vs {row['response']!r}: expected {row['expected']}, got {result}"
        for row, result in zip(rows, results, strict=True)
        if result.correct is not row["expected"]
    ]
    return 1 - len(wrong) / len(rows), wrong


def test_math_verify_suite_agrees(patient_checker: Checker) -> None:
    rows = _rows("math_verify_cases.jsonl")
    agreement, wrong = _agreement(rows, patient_checker)
    print(f"Math-Verify suite agreement: {agreement:.4f} ({len(rows) - len(wrong)}/{len(rows)})")
    assert agreement >= 0.97, wrong


def test_every_rejected_math_verify_case_says_why() -> None:
    rejected = _rows("math_verify_rejected.jsonl")
    assert rejected and all(str(row.get("rejected_because", "")).strip() for row in rejected)


CLASSES = _rows("failure_classes.jsonl")


@pytest.mark.parametrize("row", CLASSES, ids=[f"{row['class']}-{i}" for i, row in enumerate(CLASSES)])
def test_failure_class_example(row: dict[str, object], checker: Checker) -> None:
    result = checker.check_batch([_item(row)])[0]
    assert result.correct is row["expected"], result


def test_multiple_choice_formats_agree(checker: Checker) -> None:
    rows = [row for row in CLASSES if row["task"] == "mcq"]
    agreement, wrong = _agreement(rows, checker)
    print(f"multiple-choice formats agreement: {agreement:.4f} ({len(rows)} rows)")
    assert agreement >= 0.98, wrong


def test_no_false_positive_in_any_class(checker: Checker) -> None:
    negatives = [row for row in CLASSES if row["expected"] is False]
    results = checker.check_batch([_item(row) for row in negatives])
    assert not [row for row, result in zip(negatives, results, strict=True) if result.correct]
