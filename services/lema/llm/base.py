"""The one batched interface every LLM backend implements.

Stages build `GenerationRequest`s and hand a whole batch to `LLMBackend.generate`; each backend decides how to
batch, pad, parallelise or stream it. A request carries its own seed so that its completions do not depend on which
other requests share its batch: that is what lets a resumed run or another replica reproduce the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Running totals a backend keeps; read by the run summary and the Prometheus exporter."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

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
