"""Answer checking: does a response reach the gold answer? (GSM8K numbers, MATH LaTeX, multiple choice.)

Numbers are decided exactly without sympy; LaTeX goes to Math-Verify in worker processes with a per-check timeout
that works from any thread. Reasons are short snake_case strings, listed in the README's checker section.

The names below load on first use: the symbolic workers' template process runs `lema.checker.worker`, and a
one-off `lema check` waits for it, so importing this package must not import the settings and record models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lema.checker.checker import Checker, CheckItem, CheckResult, canonical_answer
    from lema.checker.extract import Extraction, extract_answer, extract_gold

_SOURCES = {
    "CheckItem": "lema.checker.checker",
    "CheckResult": "lema.checker.checker",
    "Checker": "lema.checker.checker",
    "canonical_answer": "lema.checker.checker",
    "Extraction": "lema.checker.extract",
    "extract_answer": "lema.checker.extract",
    "extract_gold": "lema.checker.extract",
}

__all__ = [
    "CheckItem",
    "CheckResult",
    "Checker",
    "Extraction",
    "canonical_answer",
    "extract_answer",
    "extract_gold",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'lema.checker' has no attribute {name!r}")
    return getattr(importlib.import_module(_SOURCES[name]), name)
