"""In-process bus: an append-only log per topic, a cursor per (consumer group, topic), like a one-partition Kafka.

Publishing a key already on the topic is a no-op, as an idempotent producer plus a keyed sink would make it.
"""

from __future__ import annotations

from collections.abc import Sequence

from lema.bus.base import Message


class MemoryBus:
    def __init__(self) -> None:
        self._logs: dict[str, list[Message]] = {}
        self._keys: dict[str, set[str]] = {}
        self._cursors: dict[tuple[str, str], int] = {}

    def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            keys = self._keys.setdefault(message.topic, set())
            if message.key not in keys:
                keys.add(message.key)
                self._logs.setdefault(message.topic, []).append(message)

    def poll(self, group: str, topic: str, max_messages: int) -> list[Message]:
        """The next messages for `group` on `topic`; the cursor advances (commit on poll: nothing crosses a process)."""
        start = self._cursors.get((group, topic), 0)
        batch = self._logs.get(topic, [])[start : start + max_messages]
        self._cursors[(group, topic)] = start + len(batch)
        return batch

    def pending(self, group: str, topic: str) -> int:
        return len(self._logs.get(topic, ())) - self._cursors.get((group, topic), 0)

    def messages(self, topic: str) -> list[Message]:
        return list(self._logs.get(topic, ()))

    def close(self) -> None:
        self._logs.clear()
        self._keys.clear()
        self._cursors.clear()
