from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from lema.llm.base import ChatMessage, Completion, GenerationRequest, LLMError, TokenUsage
from lema.llm.journal import JournaledBackend, ReplayBackend, request_key
from lema.records import GenerationParams


class CountingBackend:
    """Counts the requests that reach it: the journal's whole job is keeping this number down."""

    def __init__(self) -> None:
        self.served: list[GenerationRequest] = []
        self._usage = TokenUsage()

    @property
    def model(self) -> str:
        return "counting"

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.served.extend(requests)
        return [[Completion(f"reply to {r.messages[-1].content} #{r.params.seed}", 3, 4)] for r in requests]

    def close(self) -> None:
        pass


def request(text: str, seed: int = 0) -> GenerationRequest:
    return GenerationRequest((ChatMessage("user", text),), GenerationParams(seed=seed))


def test_journal_answers_finished_requests_without_calling_the_model(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    first = CountingBackend()
    backend = JournaledBackend(first, journal)
    out = backend.generate([request("a"), request("b"), request("a")])
    assert [c[0].text for c in out] == ["reply to a #0", "reply to b #0", "reply to a #0"]
    assert len(first.served) == 2  # the duplicate in one batch is generated once
    backend.close()

    second = CountingBackend()
    resumed = JournaledBackend(second, journal)
    out = resumed.generate([request("b"), request("c"), request("a", seed=1)])
    assert [c[0].text for c in out] == ["reply to b #0", "reply to c #0", "reply to a #1"]
    assert [r.messages[-1].content for r in second.served] == ["c", "a"]
    assert resumed.hits == 1
    resumed.close()


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    backend = JournaledBackend(CountingBackend(), journal)
    backend.generate([request("a")])
    backend.close()
    with journal.open("a") as handle:
        handle.write('{"key": "r-torn", "completions": [{"te')  # SIGKILL mid-write
    again = CountingBackend()
    JournaledBackend(again, journal).generate([request("a")])
    assert again.served == []


def test_replay_answers_recorded_requests_and_names_missing_ones(tmp_path: Path) -> None:
    journal = tmp_path / "rec.jsonl"
    recorder = JournaledBackend(CountingBackend(), journal)
    recorder.generate([request("a")])
    recorder.close()
    replay = ReplayBackend(journal, model="counting")
    assert replay.generate([request("a")])[0][0].text == "reply to a #0"
    assert replay.usage.completion_tokens == 4
    with pytest.raises(LLMError, match=r"rec\.jsonl: no recorded completion"):
        replay.generate([request("zzz")])
    with pytest.raises(LLMError, match="does not exist"):
        ReplayBackend(tmp_path / "none.jsonl", model="m")


def test_request_key_covers_everything_that_changes_a_completion() -> None:
    base = request_key("m", request("a"))
    assert base == request_key("m", request("a"))
    assert base != request_key("m2", request("a"))
    assert base != request_key("m", request("a", seed=1))
    assert base != request_key("m", GenerationRequest(request("a").messages, n=2))
    assert json.loads(json.dumps(base)) == base
