"""Choosing a backend from settings, and resolving model names to local weights, without loading a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from llm_testing import FaultyServer, ask

from lema.config import LLMSettings
from lema.llm.base import LLMBackend, LLMError
from lema.llm.factory import create_backend
from lema.llm.journal import JournaledBackend
from lema.llm.models import SMOLLM2_ALIAS, cache_root, resolve_model_dir, smollm2_gguf


def test_openai_settings_build_an_openai_backend() -> None:
    backend = create_backend(LLMSettings(backend="openai", model="gpt-4o-mini"))
    try:
        assert isinstance(backend, LLMBackend)
        assert backend.model == "gpt-4o-mini"
        assert type(backend).__name__ == "OpenAIBackend"
    finally:
        backend.close()


def test_replay_settings_answer_from_a_recording(tmp_path: Path) -> None:
    recording = tmp_path / "journal.jsonl"
    request = ask("2+2?", seed=4, n=2)
    with FaultyServer() as server:
        live = create_backend(LLMSettings(backend="openai", model="m", base_url=server.url))
        journaled = JournaledBackend(live, recording)
        recorded = journaled.generate([request])
        journaled.close()
    replay = create_backend(LLMSettings(backend="replay", model="m", recording=recording))
    assert replay.generate([request]) == recorded
    assert [c.text for c in recorded[0]] == ["seed=4", "seed=5"]


def test_replay_without_a_recording_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LLMError, match="does not exist"):
        create_backend(LLMSettings(backend="replay", model="m", recording=tmp_path / "missing.jsonl"))


def test_vllm_without_vllm_installed_says_so() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(LLMError, match="needs vLLM installed"):
            create_backend(LLMSettings(backend="vllm"))
    else:
        pytest.skip("vLLM is installed here; test_vllm_backend.py covers it")


def test_cache_root_prefers_settings_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEMA_CACHE_DIR", str(tmp_path / "from-env"))
    assert cache_root(tmp_path / "configured") == tmp_path / "configured"
    assert cache_root() == tmp_path / "from-env"
    monkeypatch.delenv("LEMA_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "lema"


def test_the_alias_finds_the_gguf_the_package_ships() -> None:
    gguf = smollm2_gguf()
    assert gguf.suffix == ".gguf"
    assert gguf.stat().st_size > 50_000_000


def test_a_model_directory_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert resolve_model_dir(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-360M", "no-such-dir", "smollm2-1.7b"])
def test_unknown_models_are_refused_without_downloading(name: str) -> None:
    with pytest.raises(LLMError, match=re.escape(repr(name)) + ".*never downloaded"):
        resolve_model_dir(name)


def test_an_existing_cache_is_not_converted_again(tmp_path: Path) -> None:
    cached = tmp_path / "models" / SMOLLM2_ALIAS
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert resolve_model_dir(SMOLLM2_ALIAS, tmp_path) == cached
