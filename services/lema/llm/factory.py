"""Builds the backend that an `llms.<name>` settings entry describes.

Each branch imports its backend module only when chosen, so a process that talks to an HTTP endpoint never loads
torch, and vLLM stays an optional extra. In-process engines come wrapped in a `BatchingBackend`: one engine thread
that merges concurrent callers' requests into shared batches and is the only thread touching the engine.
"""

from __future__ import annotations

from lema.config import LLMSettings
from lema.llm.base import LLMBackend
from lema.llm.batching import BatchingBackend


def create_backend(settings: LLMSettings) -> LLMBackend:
    if settings.backend == "transformers":
        from lema.llm.transformers_backend import TransformersBackend

        return BatchingBackend(TransformersBackend(settings), settings.max_batch_requests, settings.batch_wait_ms)
    if settings.backend == "openai":
        from lema.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    if settings.backend == "vllm":
        from lema.llm.vllm_backend import VLLMBackend

        return BatchingBackend(VLLMBackend(settings), settings.max_batch_requests, settings.batch_wait_ms)
    from lema.llm.journal import ReplayBackend

    return ReplayBackend(settings.recording, model=settings.model)
