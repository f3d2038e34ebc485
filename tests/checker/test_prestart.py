"""`lema check --task math` starts the symbolic template before the command line is parsed, and only then."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lema.checker import prestart
from lema.checker.pool import SymbolicPool


class _FakeTemplate:
    started = 0

    def __init__(self, warm_up: bool = True) -> None:
        _FakeTemplate.started += 1
        self.warm_up = warm_up


@pytest.fixture
def fake_template(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_FakeTemplate]]:
    monkeypatch.setattr(prestart, "WorkerTemplate", _FakeTemplate)
    _FakeTemplate.started = 0
    yield _FakeTemplate
    assert prestart.take() is None, "a test left a started template behind"


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--task", "math", "-i", "in.jsonl"],
        ["--debug", "check", "-i", "in.jsonl", "--task=math"],
        ["check", "--task", "gsm8k", "--task", "math"],
    ],
)
def test_a_latex_check_starts_the_template_once_and_hands_it_over(
    args: list[str], fake_template: type[_FakeTemplate]
) -> None:
    prestart.start_for(args)
    template = prestart.take()
    assert isinstance(template, fake_template)
    assert not template.warm_up, "a one-off command's workers serve to the end: nothing to warm up for"
    assert prestart.take() is None
    assert fake_template.started == 1


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["check", "--task", "gsm8k", "-i", "in.jsonl"],
        ["check", "--task", "math", "--task", "mcq"],
        ["check", "-i", "math"],
        ["run", "--task", "math"],
        ["dataset", "check", "--task", "math"],
    ],
)
def test_other_commands_start_nothing(args: list[str], fake_template: type[_FakeTemplate]) -> None:
    prestart.start_for(args)
    assert prestart.take() is None
    assert fake_template.started == 0


def test_the_started_template_forks_a_working_checker() -> None:
    prestart.start_for(["check", "--task", "math"])
    template = prestart.take()
    assert template is not None
    pool = SymbolicPool(1, timeout_s=60, template=template)
    try:
        assert pool.compare("\\frac{1}{2}", "0.5") == "symbolic_equal"
    finally:
        pool.close()
