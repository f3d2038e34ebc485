"""Shared test paths. GSM8K subsets ship in examples/data (see its README), so a bare clone runs the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# As in `lema.cli.main`: passive OpenMP waiting, set before any test imports torch (see the comment there).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
GSM8K_TEST = DATA / "gsm8k_test.jsonl"
GSM8K_TRAIN = DATA / "gsm8k_train.jsonl"


def repo_data(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: it ships with the repository (examples/data/README.md)")
    return path


@pytest.fixture(scope="session")
def gsm8k_test_file() -> Path:
    return repo_data(GSM8K_TEST)


@pytest.fixture(scope="session")
def gsm8k_train_file() -> Path:
    return repo_data(GSM8K_TRAIN)
