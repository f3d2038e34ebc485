"""Cross-request batching over the real SmolLM2: merged calls give exactly the completions each call gets alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from llm_testing import ask

from lema.config import LLMSettings
from lema.llm.base import LLMError
from lema.llm.batching import BatchingBackend
from lema.llm.factory import create_backend
from lema.llm.journal import ReplayBackend, request_key

CALLS = [
    [ask("What is 15 plus 27?", temperature=0.8, top_p=0.9, max_tokens=16, seed=3, n=2)],
    [ask("Name a prime number.", temperature=0.0, max_tokens=10)],
    [ask("Count to five.", temperature=0.7, max_tokens=16, seed=9, stop=(",",))],
    [ask("What is 6 times 7?", temperature=1.0, max_tokens=12, seed=11), ask("Say hi.", max_tokens=6, seed=2)],
]


@pytest.mark.slow
def test_concurrent_calls_share_batches_and_get_the_completions_they_get_alone(smollm2: Any) -> None:
    alone = [smollm2.generate(requests) for requests in CALLS]
    batching = BatchingBackend(smollm2, max_batch_requests=64, batch_wait_ms=300)
    merged: list[Any] = [None] * len(CALLS)
    start = threading.Barrier(len(CALLS))

    def call(index: int) -> None:
        start.wait(timeout=30)
        merged[index] = batching.generate(CALLS[index])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(CALLS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    batching.stop()
    assert merged == alone
    assert batching.batches < len(CALLS)  # calls arriving within the wait went to the model together


@pytest.mark.slow
def test_a_batch_never_exceeds_max_batch_requests(smollm2: Any) -> None:
    batching = BatchingBackend(smollm2, max_batch_requests=2, batch_wait_ms=300)
    singles = [[ask(f"What is {i} plus {i}?", max_tokens=4)] for i in range(5)]
    futures = [batching.submit(requests) for requests in singles]
    results = [future.result(timeout=300) for future in futures]
    batching.stop()
    assert results == [smollm2.generate(requests) for requests in singles]
    assert batching.batches == 3  # 2 + 2 + 1


def test_a_failing_call_fails_alone(tmp_path: Path) -> None:
    known = ask("recorded question")
    recording = tmp_path / "recording.jsonl"
    completion = {"text": "42", "prompt_tokens": 3, "completion_tokens": 1, "finish_reason": "stop"}
    entry = {"key": request_key("m", known), "completions": [completion]}
    recording.write_text(json.dumps(entry) + "\n")
    batching = BatchingBackend(ReplayBackend(recording, model="m"), max_batch_requests=8, batch_wait_ms=300)
    good, bad = batching.submit([known]), batching.submit([ask("never recorded")])
    assert good.result(timeout=30)[0][0].text == "42"
    with pytest.raises(LLMError, match="no recorded completion"):
        bad.result(timeout=30)
    batching.close()
    with pytest.raises(LLMError, match="closed"):
        batching.generate([known])


@pytest.mark.slow
def test_the_factory_puts_in_process_engines_behind_one_engine_thread(smollm2_settings: LLMSettings) -> None:
    backend = create_backend(smollm2_settings)
    try:
        assert isinstance(backend, BatchingBackend)
        assert backend.generate([ask("Say hi.", max_tokens=3)])[0][0].completion_tokens > 0
    finally:
        backend.close()


@pytest.mark.slow
def test_stopping_fails_unfinished_calls_at_once_instead_of_waiting_for_the_model(smollm2: Any) -> None:
    batching = BatchingBackend(smollm2, max_batch_requests=1, batch_wait_ms=0)
    generating, queued = (batching.submit([ask(f"Write a long story number {i}.", max_tokens=200)]) for i in range(2))
    batching.stop()
    for future in (generating, queued):
        assert isinstance(future.exception(timeout=0), LLMError)
