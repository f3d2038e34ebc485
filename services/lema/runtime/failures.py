"""The one error policy every runtime follows: is a failure *transient* (a dependency is unavailable: wait for it) or
*permanent* (this input can never succeed: dead-letter it)?

Transient: the broker unreachable or an invalidated producer (kafka-python's retriable errors, an unknown or fenced
producer id; librdkafka's retriable and fatal errors — a fatal one invalidates the client, which is rebuilt — and
its transport, timeout and coordinator codes), the store unreachable or answering 5xx, an LLM that stayed
unavailable through its own retries (`LLMUnavailable`: timeouts, 429, 5xx, refused connections), any refused or
reset connection. Everything else —
undecodable or invalid messages, deterministic stage errors, oversized messages — is permanent.

A runtime that meets a transient failure reports the dependency down (`Dependencies`: one log line per state change,
the `lema_dependency_up{dependency}` gauge, health NOT_SERVING through its listeners), backs off (`Backoff`: capped,
full jitter) and retries the same work until the dependency is back; it never dead-letters the input and never
commits an offset whose results were not acknowledged.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Gauge

from lema.llm.base import LLMUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

BROKER, STORE, LLM = "broker", "store", "llm"
DEPENDENCY_UP = Gauge(
    "lema_dependency_up", "1 while this process can use the dependency, 0 while it is waiting for it.", ["dependency"]
)
_TRANSIENT_BROKER_ERRORS = ("UnknownProducerIdError", "ProducerFencedError", "OutOfOrderSequenceNumberError")
_TRANSIENT_RDKAFKA_CODES = (
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_RESOLVE",
    "_MSG_TIMED_OUT",
    "_TIMED_OUT",
    "_TIMED_OUT_QUEUE",
    "_WAIT_COORD",
    "_PURGE_QUEUE",
    "_PURGE_INFLIGHT",
    "REQUEST_TIMED_OUT",
    "NETWORK_EXCEPTION",
    "BROKER_NOT_AVAILABLE",
    "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_FOR_PARTITION",
    "NOT_COORDINATOR",
    "COORDINATOR_NOT_AVAILABLE",
    "COORDINATOR_LOAD_IN_PROGRESS",
    "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    "UNKNOWN_TOPIC_OR_PART",
)
"""librdkafka error codes (KafkaError names) meaning the broker is unavailable, even when not flagged retriable."""
_TRANSIENT_S3_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


@dataclass(frozen=True)
class Transient:
    """A failure worth waiting out: which dependency is down, and why (one line, no traceback)."""

    dependency: str
    reason: str


def classify(exc: BaseException) -> Transient | None:
    """`Transient` when `exc` (or an exception it was raised from) means a dependency is unavailable; None when the
    failure is permanent."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        dependency = _dependency_down(current)
        if dependency is not None:
            text, name = str(current), type(current).__name__
            reason = text if text.startswith(name) else f"{name}: {text}" if text else name
            return Transient(dependency, reason.splitlines()[0][:300])
        current = current.__cause__ or current.__context__
    return None


def _dependency_down(exc: BaseException) -> str | None:
    from confluent_kafka import KafkaError as RdKafkaError
    from confluent_kafka import KafkaException as RdKafkaException
    from kafka.errors import KafkaError
    from minio.error import S3Error, ServerError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, LLMUnavailable):
        return LLM
    if isinstance(exc, KafkaError):
        return BROKER if exc.retriable or type(exc).__name__ in _TRANSIENT_BROKER_ERRORS else None
    if isinstance(exc, RdKafkaException) and exc.args and isinstance(exc.args[0], RdKafkaError):
        error = exc.args[0]
        return BROKER if error.retriable() or error.fatal() or error.name() in _TRANSIENT_RDKAFKA_CODES else None
    if isinstance(exc, ServerError) or (isinstance(exc, S3Error) and exc.code in _TRANSIENT_S3_CODES):
        return STORE
    if isinstance(exc, Urllib3Error):  # the minio client's transport: refused, reset, timed out
        return STORE
    if isinstance(exc, ConnectionError | TimeoutError):
        return "network"
    return None


class Backoff:
    """Waits between retries: doubling up to a cap, jittered (uniform in the upper half) so replicas spread out."""

    def __init__(self, initial_s: float = 0.5, cap_s: float = 5.0) -> None:
        self.initial_s, self.cap_s = initial_s, cap_s
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class Dependencies:
    """The availability of what this process depends on, reported once per change (log, gauge, listeners)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """`listener(all_up)` runs whenever the set of unavailable dependencies becomes empty or non-empty."""
        self._listeners.append(listener)

    @property
    def all_up(self) -> bool:
        return not self._down

    def down(self, failure: Transient) -> None:
        with self._lock:
            if failure.dependency in self._down:
                return
            was_up = not self._down
            self._down[failure.dependency] = failure.reason
        DEPENDENCY_UP.labels(failure.dependency).set(0)
        log.warning(
            "%s: %s unavailable (%s); pausing and retrying until it is back",
            self.owner,
            failure.dependency,
            failure.reason,
        )
        if was_up:
            self._notify(False)

    def up(self, dependency: str) -> None:
        with self._lock:
            if self._down.pop(dependency, None) is None:
                DEPENDENCY_UP.labels(dependency).set(1)
                return
            now_all_up = not self._down
        DEPENDENCY_UP.labels(dependency).set(1)
        log.warning("%s: %s is back; resuming", self.owner, dependency)
        if now_all_up:
            self._notify(True)

    def _notify(self, all_up: bool) -> None:
        for listener in self._listeners:
            listener(all_up)


class Interrupted(Exception):
    """A stop was requested while waiting for a dependency: the work in hand was not finished (nor committed)."""


def retry_transient(
    action: Callable[[], T], dependencies: Dependencies, stop: threading.Event, backoff: Backoff | None = None
) -> T:
    """`action()`, retried after every transient failure until it succeeds; permanent failures propagate.

    Raises `Interrupted` when `stop` is set while waiting.
    """
    backoff = backoff or Backoff()
    waited: set[str] = set()
    while True:
        try:
            result = action()
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            dependencies.down(failure)
            waited.add(failure.dependency)
            if stop.wait(backoff.next_delay()):
                raise Interrupted(f"stopped while waiting for {failure.dependency}") from exc
            continue
        for dependency in waited:
            dependencies.up(dependency)
        return result
