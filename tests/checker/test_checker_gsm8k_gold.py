"""The shipped GSM8K test lines (the first 300): every gold solution reaches its own gold, every perturbed one not."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from lema.checker import Checker, CheckItem, extract_gold


def _solutions(path: Path) -> list[str]:
    return [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _perturbations(gold: str) -> set[str]:
    """Wrong final answers: one more, one less, ten times, and the first two differing digits swapped."""
    value = Fraction(gold.replace(",", ""))
    wrong = {value + 1, value - 1, value * 10}
    digits = gold.replace(",", "").lstrip("-")
    pair = next(
        (i for i in range(len(digits) - 1) if digits[i] != digits[i + 1] and (digits[i] + digits[i + 1]).isdigit()),
        None,
    )
    if pair is not None and not (pair == 0 and digits[1] == "0"):  # swapping must not make a leading zero
        swapped = digits[:pair] + digits[pair + 1] + digits[pair] + digits[pair + 2 :]
        wrong.add(Fraction(("-" if gold.startswith("-") else "") + swapped))
    wrong.discard(value)
    return {str(w) if w.denominator == 1 else str(float(w)) for w in wrong}


def test_every_gold_solution_reaches_its_own_gold(gsm8k_test_file: Path, checker: Checker) -> None:
    solutions = _solutions(gsm8k_test_file)
    assert len(solutions) == 300
    results = checker.check_batch([CheckItem(solution, solution, "gsm8k") for solution in solutions])
    failures = [(s[-40:], r) for s, r in zip(solutions, results, strict=True) if not r.correct]
    assert failures == []
    assert {r.reason for r in results} == {"numeric_equal"}


def test_every_perturbed_answer_is_wrong(gsm8k_test_file: Path, checker: Checker) -> None:
    items = []
    for solution in _solutions(gsm8k_test_file):
        gold = extract_gold(solution, "gsm8k")
        assert gold is not None
        body = solution.rsplit("####", 1)[0]
        items += [CheckItem(f"{body}#### {wrong}", solution, "gsm8k") for wrong in _perturbations(gold)]
    assert len(items) > 3 * 300
    results = checker.check_batch(items)
    survivors = [(item.response[-30:], r) for item, r in zip(items, results, strict=True) if r.correct]
    assert survivors == []
    assert {r.reason for r in results} == {"numeric_mismatch"}


@pytest.mark.parametrize("gold", ["18", "-3", "1,450,000", "0.5", "21"])
def test_perturbations_differ_from_the_gold(gold: str) -> None:
    wrong = _perturbations(gold)
    assert len(wrong) >= 3
    assert all(Fraction(w) != Fraction(gold.replace(",", "")) for w in wrong)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", w) for w in wrong)
