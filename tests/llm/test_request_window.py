"""The embedded runtime keeps a full window of LLM requests in flight across batches, against a real HTTP server."""

from __future__ import annotations

from pathlib import Path

from llm_testing import FaultyServer

from lema.config import LemaSettings
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
