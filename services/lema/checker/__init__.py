"""Answer checking: does a response reach the gold answer? (GSM8K numbers, MATH LaTeX, multiple choice.)

Numbers are decided exactly without sympy; LaTeX goes to Math-Verify in worker processes with a per-check timeout
that works from any thread. Reasons are short snake_case strings, listed in the README's checker section.
"""

from lema.checker.checker import Checker, CheckItem, CheckResult, canonical_answer
from lema.checker.extract import Extraction, extract_answer, extract_gold

__all__ = [
    "CheckItem",
    "CheckResult",
    "Checker",
    "Extraction",
    "canonical_answer",
    "extract_answer",
    "extract_gold",
]
