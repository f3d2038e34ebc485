"""Builds the backend that an `llms.<name>` settings entry describes.

Each branch imports its backend module only when chosen, so a process that talks to an HTTP endpoint never loads
torch, and vLLM stays an optional extra.
"""

from __future__ import annotations

from lema.config import LLMSettings
from lema.llm.base import LLMBackend


def create_backend(settings: LLMSettings) -> LLMBackend:
    if settings.backend == "transformers":
        from lema.llm.transformers_backend import TransformersBackend

        return TransformersBackend(settings)
    if settings.backend == "openai":
        from lema.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    if settings.backend == "vllm":
        from lema.llm.vllm_backend import VLLMBackend

        return VLLMBackend(settings)
    from lema.llm.journal import ReplayBackend

    return ReplayBackend(settings.recording, model=settings.model)
