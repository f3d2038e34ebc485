"""The message bus between stage workers: named topics of keyed records.

Delivery is at-least-once; keys are deterministic record ids, so consumers treat a repeated key as a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lema.records import Record


class Topics:
    """Topic names (the Kafka runtime prepends a configurable prefix)."""

    QUESTIONS = "questions"
    PATHS = "paths"
    MISTAKES = "mistakes"
    COT = "cot"
    CORRECTIONS = "corrections"
    VERIFIED = "corrections.verified"
    DROPS = "drops"
    DLQ = "dlq"

    ALL = (QUESTIONS, PATHS, MISTAKES, COT, CORRECTIONS, VERIFIED, DROPS, DLQ)


@dataclass(frozen=True)
class Message:
    topic: str
    key: str
    record: Record


class Bus(Protocol):
    def publish(self, messages: Sequence[Message]) -> None:
        """Publish and wait until the bus has accepted every message."""
        ...

    def close(self) -> None: ...
