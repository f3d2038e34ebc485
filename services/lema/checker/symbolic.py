"""LaTeX equivalence by Math-Verify, with the false "equal" verdicts it is known for closed off.

This module runs inside the checker's worker processes (see `pool.py`); importing it loads sympy and the LaTeX
parser, so nothing on the fast path imports it. Math-Verify's own SIGALRM timeouts are switched off: the worker puts
one deadline around the whole check instead.

What is fixed on top of Math-Verify:
- answers are always parsed as LaTeX (wrapped in `$…$`), never by its plain-expression extractor, which reads a
  bare equation such as '3x-y+13=0' as its right-hand side '0', so that any two such equations matched;
- Math-Verify compares numbers after rounding to 6 decimals, so '1/2^{99}' equalled '1/2^{98}' and '1/2004!'
  equalled '1/2006!'; an "equal" between two numbers is confirmed here by their relative difference;
- only the first parse of each side is compared, never every pair of alternatives Math-Verify extracts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import lru_cache

import math_verify
from sympy import Basic, Expr, Float, MatrixBase

_LATEX_ONLY = [math_verify.LatexExtractionConfig(boxed_match_priority=0)]
_EXACT_TOLERANCE = 1e-30  # relative: two exact numbers that agree to 30 digits are the same number
_APPROXIMATE_TOLERANCE = 1e-5  # relative, when one side is a decimal: '0.333333' is 1/3, '0.0000001' is not 2e-7
_DIGITS = 60

# The "timeout is disabled" warnings are expected here: the worker's deadline replaces Math-Verify's.
logging.getLogger("math_verify").setLevel(logging.ERROR)


# One pair of each answer shape: the first parse of a shape is slow (the LaTeX grammar's lazily built tables, sympy's
# lazy imports), so a worker runs these before it takes real checks, whose deadlines should not pay for that.
_WARM_UP = (
    ("x+1", "1+x"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("\\frac{\\pi}{3}", "\\frac{1}{3}\\pi"),
    ("(1, 2]", "[1,2)"),
    ("(-\\infty, 2)\\cup(3,\\infty)", "(-\\infty,2]"),
    ("(1,2)", "(2,1)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("y=2x+1", "y=1+2x"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    ("\\text{even}", "\\text{odd}"),
    ("50\\%", "\\frac{1}{2}"),
    ("1+i", "i+1"),
)


def warm_up_steps() -> Iterator[None]:
    """One warm-up pair per step, the LaTeX grammar's first, so that a caller can stop between any two."""
    for gold, predicted in _WARM_UP:
        compare_latex(gold, predicted)
        yield


def compare_latex(gold: str, predicted: str) -> str:
    """'symbolic_equal', 'symbolic_mismatch', or 'unparsable' when either side is not LaTeX sympy can read."""
    gold_expr, predicted_expr = _parse(gold), _parse(predicted)
    if gold_expr is None or predicted_expr is None:
        return "unparsable"
    if not math_verify.verify(gold_expr, predicted_expr, timeout_seconds=None):
        return "symbolic_mismatch"
    return "symbolic_equal" if _same_number_if_numbers(gold_expr, predicted_expr) else "symbolic_mismatch"


@lru_cache(maxsize=4_096)
def _parse(answer: str) -> Basic | MatrixBase | None:
    """The answer as sympy, or None. Cached: a question's gold (and a common wrong answer) recurs in every sample,
    and parsing is most of a check's time."""
    flat = " ".join(answer.split())
    if not flat:
        return None
    parsed = math_verify.parse(f"${flat}$", extraction_config=_LATEX_ONLY, parsing_timeout=None)
    return next((item for item in parsed if isinstance(item, Basic | MatrixBase)), None)


def _same_number_if_numbers(gold: Basic | MatrixBase, predicted: Basic | MatrixBase) -> bool:
    """Whether Math-Verify's "equal" stands: always for non-numbers; for numbers only if they truly agree."""
    if not (isinstance(gold, Expr) and isinstance(predicted, Expr) and gold.is_number and predicted.is_number):
        return True
    gold, predicted = gold.doit(), predicted.doit()
    tolerance = _APPROXIMATE_TOLERANCE if gold.has(Float) or predicted.has(Float) else _EXACT_TOLERANCE
    try:
        gold_value, predicted_value = gold.evalf(_DIGITS), predicted.evalf(_DIGITS)
        scale = max(abs(gold_value), abs(predicted_value))
        return bool(scale == 0 or abs(gold_value - predicted_value) <= tolerance * scale)
    except (TypeError, ValueError):  # no numeric value (e.g. an unevaluated limit): keep Math-Verify's verdict
        return True
