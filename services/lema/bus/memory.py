"""In-process bus: one FIFO per topic, deduplicated by key as an idempotent producer would be downstream."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from lema.bus.base import Message


class MemoryBus:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Message]] = {}
        self._seen: dict[str, set[str]] = {}

    def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            seen = self._seen.setdefault(message.topic, set())
            if message.key not in seen:
                seen.add(message.key)
                self._queues.setdefault(message.topic, deque()).append(message)

    def poll(self, topic: str, max_messages: int) -> list[Message]:
        queue = self._queues.get(topic)
        if not queue:
            return []
        return [queue.popleft() for _ in range(min(max_messages, len(queue)))]

    def pending(self, topic: str) -> int:
        return len(self._queues.get(topic, ()))

    def close(self) -> None:
        self._queues.clear()
