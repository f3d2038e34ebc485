"""Checkers shared by the whole area: worker processes take about two seconds to start, so they start once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from checker_testing import QUICK_TIMEOUT_S

from lema.checker import Checker
from lema.config import CheckerSettings


@pytest.fixture(scope="session")
def checker() -> Iterator[Checker]:
    with Checker(CheckerSettings(workers=2, timeout_s=5.0)) as shared:
        yield shared


@pytest.fixture(scope="session")
def quick_checker() -> Iterator[Checker]:
    """A short timeout, for tests that make checks time out or kill workers (so `checker` stays warm)."""
    with Checker(CheckerSettings(workers=2, timeout_s=QUICK_TIMEOUT_S)) as quick:
        yield quick
