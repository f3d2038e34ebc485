"""Builds the backend that an `llms.<name>` settings entry describes.

Each branch imports its backend module only when chosen, so a process that talks to an HTTP endpoint never loads
torch, and vLLM stays an optional extra. In-process engines come wrapped in a `BatchingBackend`: one engine thread
that merges concurrent callers' requests into shared batches and is the only thread touching the engine.
"""

from __future__ import annotations

from lema.config import LLMSettings
from lema.llm.base import LLMBackend, LLMError
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


def check_reachable(settings: LLMSettings, timeout_s: float = 10.0) -> None:
    """Fail before a run, in one line, when an HTTP backend's server does not answer at all.

    Any HTTP answer counts (even 401 or 404): only "nothing listens there" is caught here, since the first
    request reports a wrong key or model name in the server's own words.
    """
    if settings.backend != "openai":
        return
    import httpx

    from lema.llm.openai_backend import OPENAI_BASE_URL

    base = (settings.base_url or OPENAI_BASE_URL).rstrip("/")
    try:
        httpx.get(f"{base}/models", timeout=min(settings.timeout_s, timeout_s))
    except httpx.TransportError as exc:
        raise LLMError(
            f"model {settings.model!r}: no server answers at {base} ({type(exc).__name__}); "
            "start it, or fix the LLM's base_url"
        ) from None
