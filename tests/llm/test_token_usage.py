"""`busy_seconds` is wall time: overlapping `generate` calls count once, unlike the summed request latency."""

from __future__ import annotations

import pytest

from lema.llm import base
from lema.llm.base import TokenUsage


def test_overlapping_calls_count_their_wall_time_once(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(base.time, "perf_counter", lambda: now[0])
    usage = TokenUsage()
    first, second = usage.busy(), usage.busy()
    first.__enter__()  # t=0
    now[0] = 1.0
    second.__enter__()  # t=1, overlapping
    now[0] = 2.0
    first.__exit__(None, None, None)
    now[0] = 3.0
    second.__exit__(None, None, None)  # busy 0..3
    now[0] = 10.0
    with usage.busy():  # idle 3..10 does not count
        now[0] = 11.5
    assert usage.busy_seconds == pytest.approx(4.5)
