"""Helpers shared by the checker tests (a plain module: conftest files are not importable by name)."""

from __future__ import annotations

from lema.checker import Checker

QUICK_TIMEOUT_S = 0.5


def warm(checker: Checker, workers: int = 2) -> None:
    """Wait until replaced workers are up, so that a timing covers a check alone and not a worker's start."""
    for _ in range(workers):
        assert checker.check("\\boxed{x+1}", "1+x", "math").correct
