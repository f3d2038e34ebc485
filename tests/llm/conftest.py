"""Shared fixtures: the real SmolLM2, converted once per session into a temporary cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lema.config import LLMSettings


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache that starts empty, so every session exercises the GGUF conversion once."""
    return tmp_path_factory.mktemp("lema-cache")


@pytest.fixture(scope="session")
def smollm2_settings(model_cache: Path) -> LLMSettings:
    return LLMSettings(backend="transformers", model="smollm2-135m", cache_dir=model_cache, batch_size=4)


@pytest.fixture(scope="session")
def smollm2(smollm2_settings: LLMSettings) -> Iterator[Any]:
    from lema.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(smollm2_settings)
    yield backend
    backend.close()
