"""Fuzzing: random bytes, huge inputs, deep nesting and pathological LaTeX never raise and never run past the timeout.

The fast path (extraction, numbers, choices) must stay fast on anything; a symbolic check must come back within
the per-check timeout plus the pool's grace period, with reason 'timeout' when sympy could not finish.
"""

from __future__ import annotations

import random
import time

import pytest
from checker_testing import QUICK_TIMEOUT_S, warm
from hypothesis import given, settings
from hypothesis import strategies as st

from lema.checker import Checker, canonical_answer, extract_answer, extract_gold
from lema.checker.pool import _GRACE_S
from lema.records import Task

SLACK_S = 0.5  # process scheduling on a loaded 2-core CI machine
TASKS: tuple[Task, ...] = ("gsm8k", "math", "mcq")
LATEX_TOKENS = [*"\\{}$()[]^_,.=+-*/%0123456789 xabcdeAB", "\\frac", "\\boxed{", "\\sqrt", "\\text{", "\\left("]
LATEXISH = st.lists(st.sampled_from(LATEX_TOKENS), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(TASKS))
def test_random_bytes_never_break_the_fast_path(data: bytes, task: Task) -> None:
    text = data.decode("utf-8", errors="replace")
    extraction = extract_answer(text, task, choices=("yes", "no"))
    assert extraction.answer is None or isinstance(extraction.answer, str)
    extract_gold(text, task)
    canonical_answer(text, task)


@settings(max_examples=300, deadline=None)
@given(LATEXISH, LATEXISH, st.sampled_from(TASKS))
def test_latex_like_noise_never_breaks_the_fast_path(response: str, gold: str, task: Task) -> None:
    extract_answer(response, task)
    extract_gold(gold, task)
    canonical_answer(response, task)


@settings(max_examples=25, deadline=None)
@given(LATEXISH, LATEXISH)
def test_latex_like_noise_gets_a_verdict(quick_checker: Checker, response: str, gold: str) -> None:
    started = time.monotonic()
    result = quick_checker.check(f"\\boxed{{{response}}}", gold, "math")
    assert isinstance(result.correct, bool) and result.reason
    assert time.monotonic() - started < 60  # bounded even if this check had to wait for a replaced worker


HUGE = [
    pytest.param("The answer is " + "9" * 1_000_000, "gsm8k", id="million-digit-number"),
    pytest.param("1" * 1_000_000, "gsm8k", id="million-digits"),
    pytest.param("The answer is 5. " * 50_000, "gsm8k", id="many-markers"),
    pytest.param("\\boxed{" * 100_000, "math", id="many-unclosed-boxes"),
    pytest.param("{" * 300_000 + "}" * 300_000, "math", id="deep-braces"),
    pytest.param("\\boxed{" + "{" * 300_000 + "1" + "}" * 300_001, "mcq", id="deep-box"),
    pytest.param("$" * 500_000, "math", id="dollars"),
    pytest.param("The answer is " + "(" * 200_000, "mcq", id="parentheses"),
    pytest.param("".join(random.Random(0).choice("0123456789,./$%-= ") for _ in range(1_000_000)), "gsm8k", id="noise"),
]


@pytest.mark.parametrize(("text", "task"), HUGE)
def test_huge_inputs_are_handled_quickly_on_the_fast_path(text: str, task: Task) -> None:
    started = time.monotonic()
    extract_answer(text, task, choices=("A", "B"))
    extract_gold(text, task)
    assert time.monotonic() - started < 5


PATHOLOGICAL = [
    ("(x+1)^{2000}", "(x+2)^{2000}"),
    ("9^{9^{9}}", "5"),
    ("\\frac{1}{" * 300 + "2" + "}" * 300, "\\frac{1}{2}"),
    ("\\begin{pmatrix}" + "&".join(["x^{50}+1"] * 40) + "\\end{pmatrix}", "\\begin{pmatrix}1\\end{pmatrix}"),
]


@pytest.mark.parametrize(
    ("predicted", "gold"), PATHOLOGICAL, ids=[f"pathological-{i}" for i in range(len(PATHOLOGICAL))]
)
def test_pathological_latex_returns_within_the_timeout(quick_checker: Checker, predicted: str, gold: str) -> None:
    warm(quick_checker)
    started = time.monotonic()
    result = quick_checker.check(f"\\boxed{{{predicted}}}", gold, "math")
    elapsed = time.monotonic() - started
    assert not result.correct
    assert elapsed < QUICK_TIMEOUT_S + _GRACE_S + SLACK_S, (elapsed, result)
