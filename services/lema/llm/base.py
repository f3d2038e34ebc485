"""The one batched interface every LLM backend implements.

Stages build `GenerationRequest`s and hand a whole batch to `LLMBackend.generate`; each backend decides how to
batch, pad, parallelise or stream it. A request carries its own seed so that its completions do not depend on which
other requests share its batch: that is what lets a resumed run or another replica reproduce the same records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from lema.records import GenerationParams

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    n: int = 1
    """Number of samples; sample i is drawn with seed `params.seed + i`."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


@dataclass
class TokenUsage:
    """Running totals a backend keeps; read by the run summary and the Prometheus exporter.

    `seconds` sums each request's latency (concurrent requests overlap, so it can exceed the run's length);
    `busy_seconds` is wall time during which at least one `generate` call was in flight.
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0
    _in_flight: int = field(default=0, repr=False, compare=False)
    _busy_since: float = field(default=0.0, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Wrap a `generate` call: overlapping calls (threads, an event loop) count their wall time once."""
        with self._lock:
            if self._in_flight == 0:
                self._busy_since = time.perf_counter()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self.busy_seconds += time.perf_counter() - self._busy_since

    def add(self, completions: Sequence[Completion], seconds: float) -> None:
        self.requests += 1
        self.prompt_tokens += completions[0].prompt_tokens if completions else 0
        self.completion_tokens += sum(c.completion_tokens for c in completions)
        self.seconds += seconds


class LLMError(RuntimeError):
    """A backend could not produce a completion (after its own retries)."""


class LLMUnavailable(LLMError):
    """The LLM server stayed unreachable, overloaded or failing (timeouts, 429, 5xx) through the backend's retry
    window: a transient failure that the runtimes wait out instead of dead-lettering the input."""


@runtime_checkable
class LLMBackend(Protocol):
    @property
    def model(self) -> str:
        """The model name recorded on every record this backend produces."""
        ...

    @property
    def usage(self) -> TokenUsage: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """One list of `request.n` completions per request, in request order."""
        ...

    def close(self) -> None: ...
