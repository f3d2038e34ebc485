"""Shared test paths. Test data lives in ../shared beside the repository (as in CI); it is never copied in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# As in `lema.cli.main`: passive OpenMP waiting, set before any test imports torch (see the comment there).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: tests expect ../shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def gsm8k_test_file() -> Path:
    return shared_data("gsm8k_test.jsonl")


@pytest.fixture(scope="session")
def gsm8k_train_file() -> Path:
    return shared_data("gsm8k_train.jsonl")
