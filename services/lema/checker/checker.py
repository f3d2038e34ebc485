"""Does a response reach the gold answer? `Checker` decides, for one response or a batch.

Each check first extracts both answers, then takes the cheapest rule that can decide: numbers (and tuples,
intervals and sets of numbers) are compared exactly as fractions, identical normalised LaTeX is equal, multiple-choice
answers are compared as letters or choice texts. Only MATH answers that none of these decide go to Math-Verify, in
worker processes (`pool.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from lema.checker.choices import choice_letter, compare_choices, text_key
from lema.checker.extract import compile_patterns, extract_answer, extract_gold
from lema.checker.latex import normalize_latex, unit_of
from lema.checker.numbers import (
    PercentPolicy,
    PercentSetting,
    number_key,
    number_lists_equal,
    numbers_equal,
    parse_number,
    parse_number_list,
    percent_policy_for,
)
from lema.checker.pool import SymbolicPool, WorkerTemplate
from lema.config import CheckerSettings
from lema.records import Task


@dataclass(frozen=True)
class CheckResult:
    """The verdict, the answer extracted from the response (None if none was) and why, e.g. 'numeric_equal'."""

    correct: bool
    predicted: str | None
    reason: str


@dataclass(frozen=True)
class CheckItem:
    response: str
    gold: str
    task: Task
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Symbolic:
    """A check that only Math-Verify can settle."""

    gold: str
    predicted: str


class Checker:
    """Checks answers against gold. Owns the worker processes for symbolic checks; `close()` stops them.

    Thread-safe: `check` may be called from any thread, e.g. a gRPC server's handler threads.
    """

    def __init__(
        self,
        settings: CheckerSettings | None = None,
        *,
        patterns: Sequence[str] = (),
        template: WorkerTemplate | None = None,
    ) -> None:
        """`patterns`: extra answer regexes (the first group is the answer), for prompts with their own format;
        `template`: the symbolic workers' template, started early by a caller that knows LaTeX is coming."""
        self._settings = settings or CheckerSettings()
        self._patterns = compile_patterns(patterns)
        self._pool = SymbolicPool(self._settings.workers, self._settings.timeout_s, template)

    def __enter__(self) -> Checker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def check(self, response: str, gold: str, task: Task, choices: Sequence[str] = ()) -> CheckResult:
        """Whether `response` reaches `gold` (a bare answer or a whole reference solution)."""
        return self._settle(self._decide(CheckItem(response, gold, task, tuple(choices))))

    def check_fast(self, item: CheckItem) -> CheckResult | None:
        """The verdict when a rule without Math-Verify decides it, else None (then `check` it). It never waits on a
        worker process, so an event loop may call it inline."""
        outcome = self._decide_fast(item)
        return outcome if isinstance(outcome, CheckResult) else None

    def check_batch(self, items: Sequence[CheckItem]) -> list[CheckResult]:
        """Results in input order; symbolic checks run in parallel on the worker processes."""
        decided = [self._decide(item) for item in items]
        symbolic = [outcome for outcome in decided if isinstance(outcome, _Symbolic)]
        with ThreadPoolExecutor(max_workers=self._settings.workers) as threads:
            settled = iter(threads.map(self._settle, symbolic))
            return [next(settled) if isinstance(outcome, _Symbolic) else outcome for outcome in decided]

    def _decide(self, item: CheckItem) -> CheckResult | _Symbolic:
        outcome = self._decide_fast(item)
        if isinstance(outcome, _Symbolic):
            self._pool.start()  # overlaps the workers' start with deciding the rest of a batch
        return outcome

    def _decide_fast(self, item: CheckItem) -> CheckResult | _Symbolic:
        extraction = extract_answer(item.response, item.task, item.choices, self._patterns)
        predicted = extraction.answer
        if predicted is None:
            return CheckResult(False, None, extraction.reason)
        gold = extract_gold(item.gold, item.task)
        if gold is None:
            return CheckResult(False, predicted, "no_gold")
        decided = (
            compare_choices(gold, predicted, item.choices)
            if item.task == "mcq"
            else _compare_plain(gold, predicted, percent_policy_for(self._settings.percent_policy, item.task))
        )
        if decided is not None:
            return CheckResult(decided[0], predicted, decided[1])
        if item.task == "gsm8k":
            return CheckResult(False, predicted, "not_a_number")
        return _Symbolic(gold, predicted)

    def _settle(self, outcome: CheckResult | _Symbolic) -> CheckResult:
        if isinstance(outcome, CheckResult):
            return outcome
        reason = self._pool.compare(outcome.gold, outcome.predicted)
        return CheckResult(reason == "symbolic_equal", outcome.predicted, reason)


def _compare_plain(gold: str, predicted: str, policy: PercentPolicy) -> tuple[bool, str] | None:
    """The verdict when both answers are numbers, tuples/intervals/sets of numbers with the same brackets, or the
    same LaTeX; None when none of these decides. Two different units ('5 cm', '5 m') are never equal."""
    gold_unit, predicted_unit = unit_of(gold), unit_of(predicted)
    if gold_unit and predicted_unit and gold_unit != predicted_unit:
        return False, "unit_mismatch"
    gold_number, predicted_number = parse_number(gold), parse_number(predicted)
    if gold_number and predicted_number:
        if numbers_equal(gold_number, predicted_number, policy):
            return True, "numeric_equal"
        if gold_number.magnitude == predicted_number.magnitude:
            return False, "percent_mismatch"
        return False, "numeric_mismatch"
    gold_list, predicted_list = parse_number_list(gold), parse_number_list(predicted)
    if (gold_number and predicted_list) or (gold_list and predicted_number):
        return False, "numeric_mismatch"  # one number is never a list of them: '1,100' is 1100, '1, 100' lists two
    if gold_list and predicted_list:
        same = number_lists_equal(gold_list, predicted_list, policy)
        if same is not None:
            return same, "numeric_equal" if same else "numeric_mismatch"
    normalized = normalize_latex(gold)
    if normalized and normalized == normalize_latex(predicted):
        return True, "string_equal"
    return None


def canonical_answer(answer: str, task: Task, percent_policy: PercentSetting = "by_task") -> str:
    """A key under which equal answers group, for majority votes: '18', '18.0' and '$18' share one.

    Cheap (no sympy): numbers are keyed by exact value, other LaTeX by its normalised spelling, choices by letter.
    """
    bare = extract_gold(answer, task) or ""
    if task == "mcq":
        return choice_letter(bare, ()) or text_key(bare)
    number = parse_number(bare)
    if number:
        return number_key(number, percent_policy_for(percent_policy, task))
    return normalize_latex(bare) if task == "math" else re.sub(r"\s+", " ", bare.strip().lower())
