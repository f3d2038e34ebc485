"""A small OpenAI-compatible HTTP server over any lema backend (`lema serve-llm`).

It lets a stage, another machine, or any OpenAI client use the embedded SmolLM2 (or any configured backend) through
`POST /v1/chat/completions`, and lets lema's `openai` backend be tested against a real server. Requests that arrive
while the backend is busy join its next batch (`lema.llm.batching`), so concurrent clients share forward passes;
since a completion depends only on its own request and seed, that grouping never changes a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lema.llm.base import ChatMessage, Completion, GenerationRequest, LLMBackend, LLMError
from lema.llm.batching import BatchingBackend
from lema.records import GenerationParams


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionBody(BaseModel):
    """The subset of OpenAI's chat completion request that lema's backends honour; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[_Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int = 0
    stream: Literal[False] = False

    def to_request(self) -> GenerationRequest:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        params = GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens or GenerationParams().max_tokens,
            stop=tuple(stop),
            seed=self.seed,
        )
        messages = tuple(ChatMessage(role=m.role, content=m.content) for m in self.messages)
        return GenerationRequest(messages=messages, params=params, n=self.n)


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def create_app(backend: LLMBackend, max_batch: int = 16, batch_wait_ms: float = 5.0) -> Starlette:
    """The ASGI app serving `backend` under its own model name, through the factory's engine thread if it has one."""
    batcher = backend if isinstance(backend, BatchingBackend) else BatchingBackend(backend, max_batch, batch_wait_ms)
    own_batcher = batcher is not backend

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if own_batcher:
            batcher.stop()

    async def chat_completions(request: Request) -> JSONResponse:
        try:
            body = ChatCompletionBody.model_validate(await request.json())
        except ValueError as exc:  # malformed JSON or a ValidationError (a ValueError too)
            return _invalid_request(exc)
        if body.model != backend.model:
            return _error(
                404,
                f"model {body.model!r} is not served here; this server serves {backend.model!r}",
                "not_found_error",
                "model",
            )
        try:
            (completions,) = await asyncio.wrap_future(batcher.submit([body.to_request()]))
        except LLMError as exc:
            return _error(500, str(exc), "server_error")
        return JSONResponse(_chat_completion(backend.model, completions))

    async def models(request: Request) -> JSONResponse:
        entry = {"id": backend.model, "object": "model", "created": 0, "owned_by": "lema"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": backend.model})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _invalid_request(exc: ValueError) -> JSONResponse:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        return _error(400, f"{param}: {first['msg']}", "invalid_request_error", param)
    return _error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")


def _chat_completion(model: str, completions: list[Completion]) -> dict[str, Any]:
    prompt_tokens = completions[0].prompt_tokens if completions else 0
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            for i, c in enumerate(completions)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def serve(backend: LLMBackend, host: str, port: int) -> None:
    """Serve `backend` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(backend), host=host, port=port, log_level="info")
