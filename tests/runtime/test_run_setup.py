"""What an embedded run settles before its first LLM call: the run name's claim and a line-per-interval progress."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from lema.config import ConfigError, LemaSettings, LLMSettings
from lema.llm.base import Completion, GenerationRequest, TokenUsage
from lema.records import Question
from lema.runtime.console import stage_progress
from lema.runtime.embedded import EmbeddedPipeline


class UnusedBackend:
    """Stands for an LLM that setup opens but never calls: these tests stop before generation."""

    def __init__(self, name: str, settings: LLMSettings) -> None:
        self.model = settings.model
        self.usage = TokenUsage()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        raise AssertionError("setup must not call the LLM")

    def close(self) -> None:
        pass


def questions(*texts: str) -> list[Question]:
    return [Question.create(text, "1", "gsm8k", f"q.jsonl:{i}") for i, text in enumerate(texts, start=1)]


def pipeline(tmp_path: Path, overwrite: bool = False) -> EmbeddedPipeline:
    settings = LemaSettings.model_validate(
        {"run": {"name": "demo", "work_dir": str(tmp_path / "work")}, "store": {"root": str(tmp_path / "store")}}
    )
    return EmbeddedPipeline(settings, backend_factory=UnusedBackend, overwrite=overwrite)


def test_same_input_resumes_and_other_input_is_refused_unless_overwrite(tmp_path: Path) -> None:
    first = questions("What is 1+0?", "What is 0+1?")
    with pipeline(tmp_path) as run:
        run.prepare(first)
        run.store.put_bytes("demo/cot.jsonl", b"{}\n")
    with pipeline(tmp_path) as resumed:
        resumed.prepare(first)  # the same input: a resume, accepted
    with pipeline(tmp_path) as other, pytest.raises(ConfigError, match=r"run\.name 'demo': .* already holds a run"):
        other.prepare(questions("What is 2-1?"))
    assert (tmp_path / "store" / "demo" / "cot.jsonl").is_file()
    with pipeline(tmp_path, overwrite=True) as replaced:
        replaced.prepare(questions("What is 2-1?"))
    assert not (tmp_path / "store" / "demo" / "cot.jsonl").exists(), "--overwrite left the old run's dataset"
    with pipeline(tmp_path) as again:
        again.prepare(questions("What is 2-1?"))


def test_a_name_holding_files_of_an_unknown_input_is_refused(tmp_path: Path) -> None:
    (tmp_path / "store" / "demo").mkdir(parents=True)
    (tmp_path / "store" / "demo" / "cot.jsonl").write_text("{}\n")
    with pipeline(tmp_path) as run, pytest.raises(ConfigError, match="an unknown input"):
        run.prepare(questions("What is 1+0?"))


def test_progress_is_written_as_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with stage_progress(console, line_interval_s=0.0) as update:
        update("sample", 4, 12)
        update("check", 8, 0)
        update("sample", 12, 0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("progress 0:00:0") and lines[0].endswith(" sample 4/16")
    assert lines[-1].endswith(" sample 16/16 check 8/8")
    assert len(lines) == 4  # one per update at interval 0, and the closing line


def test_progress_lines_wait_for_the_interval() -> None:
    out = io.StringIO()
    with stage_progress(Console(file=out, force_terminal=False), line_interval_s=3600.0) as update:
        for _ in range(50):
            update("sample", 1, 0)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().rstrip().endswith("sample 50/50")
