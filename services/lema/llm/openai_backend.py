"""Any OpenAI-compatible chat endpoint: OpenAI itself, a vLLM or llama.cpp server, or `lema serve-llm`.

Requests go out concurrently (at most `max_concurrency` in flight) from an event loop that the backend owns on its
own thread, so the synchronous `generate` works the same from a plain thread and from inside a running event loop.
Sample i of a request is its own HTTP request carrying `seed + i`, the same contract as the local backends.
Throttling (429), server errors (5xx), timeouts and dropped connections are retried with exponential backoff and full
jitter, honouring `Retry-After`, for `retry_window_s` (minutes by default: a restarting server is waited out), then
raise `LLMUnavailable`, which the runtimes treat as transient. An outage is logged once when it starts and once when
it ends, not per retry. The API key is read from the environment variable that the settings name; it lives
only in the client's headers and is never logged, shown in a repr, or put in an error.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx

from lema.config import LLMSettings
from lema.llm.base import Completion, GenerationRequest, LLMError, LLMUnavailable, TokenUsage

log = logging.getLogger(__name__)
OPENAI_BASE_URL = "https://api.openai.com/v1"

T = TypeVar("T")


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; `delay` is the server's Retry-After, if it gave one."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class OpenAIBackend:
    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._url = (settings.base_url or OPENAI_BASE_URL).rstrip("/") + "/chat/completions"
        headers = {}
        key = os.environ.get(settings.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._usage = TokenUsage()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"lema-openai-{settings.model}", daemon=True
        )
        self._thread.start()
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(max_connections=settings.max_concurrency),
        )
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._failing = False
        """Whether the server is failing now; touched only on the backend's loop, so it needs no lock."""

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, url={self._url!r})"

    @property
    def model(self) -> str:
        return self._settings.model

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self._run(self._generate(requests))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the backend's own loop and wait for it, whatever loop (if any) the caller is in."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        tasks = [asyncio.ensure_future(self._request(request)) for request in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one request failed for good: the batch has failed, stop spending on the rest
                task.cancel()
            raise

    async def _request(self, request: GenerationRequest) -> list[Completion]:
        started = time.perf_counter()
        completions = await asyncio.gather(*(self._sample(request, i) for i in range(request.n)))
        self._usage.add(completions, time.perf_counter() - started)
        return list(completions)

    async def _sample(self, request: GenerationRequest, index: int) -> Completion:
        params = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed + index,
            "n": 1,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        retries, first_failure = 0, 0.0
        while True:
            try:
                async with self._slots:  # held per attempt, not while backing off
                    completion = await self._post(body)
            except _Retryable as failure:
                first_failure = first_failure or time.monotonic()
                waited = time.monotonic() - first_failure
                if waited >= self._settings.retry_window_s:
                    raise LLMUnavailable(
                        f"model {self.model!r} at {self._url}: {failure.reason}, "
                        f"still failing after {retries + 1} attempts over {waited:.1f} s (llms.*.retry_window_s)"
                    ) from None
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "model %r at %s: %s; retrying for up to %g s",
                        self.model,
                        self._url,
                        failure.reason,
                        self._settings.retry_window_s,
                    )
                delay = self._backoff(retries, failure.delay)
                await asyncio.sleep(min(delay, max(0.0, self._settings.retry_window_s - waited)))
                retries += 1
                continue
            if self._failing:
                self._failing = False
                log.warning("model %r at %s answers again", self.model, self._url)
            return completion

    async def _post(self, body: dict[str, Any]) -> Completion:
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                response = await self._client.post(self._url, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable(f"no answer within {self._settings.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code != 200:
            raise LLMError(
                f"model {self.model!r} at {self._url}: HTTP {response.status_code}: {self._error_message(response)}"
            )
        return self._completion(response)

    def _completion(self, response: httpx.Response) -> Completion:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            return Completion(
                text=choice["message"]["content"] or "",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "stop",
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                f"model {self.model!r} at {self._url}: malformed chat completion ({type(exc).__name__}: {exc}): "
                f"{self._redact(response.text[:200])!r}"
            ) from None

    def _error_message(self, response: httpx.Response) -> str:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        return self._redact(str(message)[:300])

    def _redact(self, text: str) -> str:
        """`text` with the API key masked, in case a server echoes it back in an error."""
        key = self._client.headers.get("authorization", "").removeprefix("Bearer ")
        return text.replace(key, "***") if key else text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, base * 2^attempt], capped; a server's Retry-After is a floor."""
        ceiling = min(self._settings.retry_backoff_max_s, self._settings.retry_backoff_s * 2**attempt)
        jittered = random.uniform(0.0, ceiling)
        if retry_after is None:
            return jittered
        return max(min(retry_after, self._settings.retry_backoff_max_s), jittered)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, from either of its forms (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
