"""The embedded runtime keeps a full window of LLM requests in flight across batches, against a real HTTP server."""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_testing import FaultyServer

from lema.config import LemaSettings
from lema.pipeline import batches_in_flight
from lema.records import Question
from lema.runtime.embedded import EmbeddedPipeline


def test_sample_stage_fills_max_concurrency_across_batch_boundaries(tmp_path: Path) -> None:
    questions = [Question.create(f"What is {i} plus {i}?", str(2 * i), "gsm8k", source="test") for i in range(12)]
    with FaultyServer(delay_s=0.1) as server:
        settings = LemaSettings.model_validate(
            {
                "run": {"name": "window", "work_dir": str(tmp_path / "work")},
                "llms": {"remote": {"backend": "openai", "model": "m", "base_url": server.url, "max_concurrency": 6}},
                # 2 questions x 2 samples = 4 requests per batch: alone, a batch can never fill 6 slots.
                "sample": {"models": ["remote"], "samples_per_model": 2, "batch_size": 2},
                "correct": {"model": "remote"},
                "evolve": {"enabled": False, "model": "remote"},
                "store": {"root": str(tmp_path / "store")},
            }
        )
        during_sampling: list[int] = []

        def progress(stage: str, done: int, pending: int) -> None:
            if stage == "sample" and pending == 0:  # the last sample batch is in; no other stage has called yet
                during_sampling.append(server.max_in_flight)

        with EmbeddedPipeline(settings, progress=progress) as pipeline:
            result = pipeline.run(questions)
    assert result.summary["processed"]["sample"] == 12
    assert during_sampling == [6]


@pytest.mark.parametrize(("max_concurrency", "questions_per_batch"), [(16, 4), (16, 8), (6, 2), (4, 16), (64, 3)])
def test_the_window_holds_a_second_server_batch_ready_behind_the_one_in_flight(
    max_concurrency: int, questions_per_batch: int
) -> None:
    """A server answers a whole batch at once; the requests that refill its slots must already be waiting in the
    window, not in a batch the stage starts only after the head batch's results are handed on."""
    settings = LemaSettings.model_validate(
        {
            "llms": {"remote": {"backend": "openai", "model": "m", "base_url": "http://x", "max_concurrency": 4}}
            | {"big": {"backend": "openai", "model": "b", "base_url": "http://x", "max_concurrency": max_concurrency}},
            "sample": {"models": ["remote", "big"], "samples_per_model": 2, "batch_size": questions_per_batch},
            "correct": {"model": "big"},
            "evolve": {"model": "big"},
        }
    )
    for worker, requests_per_batch in (("sampler", 2 * questions_per_batch), ("corrector", questions_per_batch)):
        depth = batches_in_flight(worker, settings, questions_per_batch)
        behind_the_head_batch = (depth - 1) * requests_per_batch
        assert behind_the_head_batch >= 2 * max_concurrency
    assert batches_in_flight("checker", settings, questions_per_batch) == 1


def test_a_replayed_llm_gets_one_batch_at_a_time(tmp_path: Path) -> None:
    """A replay answers from memory: there is no server to keep busy, and batches side by side only contend for the
    GIL (measured: the sample stage over Kafka ran 1.4x faster with one). A real LLM beside it still gets its window."""
    replay = {"backend": "replay", "model": "m", "recording": str(tmp_path / "r.jsonl"), "max_concurrency": 64}
    served = {"backend": "openai", "model": "b", "base_url": "http://x", "max_concurrency": 64}
    replayed = LemaSettings.model_validate(
        {
            "llms": {"replay": replay},
            "sample": {"models": ["replay"]},
            "correct": {"model": "replay"},
            "evolve": {"model": "replay"},
        }
    )
    assert batches_in_flight("sampler", replayed, 4) == batches_in_flight("corrector", replayed, 4) == 1
    mixed = LemaSettings.model_validate(
        {
            "llms": {"replay": replay, "served": served},
            "sample": {"models": ["replay", "served"]},
            "correct": {"model": "replay"},
            "evolve": {"model": "replay"},
        }
    )
    assert batches_in_flight("sampler", mixed, 4) > 1
