"""A stage worker in a Kafka consumer group: consume a batch, process it, produce the results, then commit.

Offsets are committed only after the broker has acknowledged every result, so a crash at any point redelivers the
batch (at-least-once); results are keyed by deterministic record ids, so a redelivered batch produces the same
messages and the sink keeps each record once.

Failures follow `lema.runtime.failures`: while a dependency (broker, store, LLM) is unavailable the batch is held
with the partitions paused and retried with backoff until it is back — a producer or consumer the broker invalidated
is rebuilt — and nothing is dead-lettered or committed meanwhile. Only permanent failures dead-letter: a message
that cannot be decoded, is larger than `bus.max_message_bytes`, or still fails after `bus.max_attempts` tries goes to
the dead-letter topic (trimmed to fit, with headers saying why and from where); the worker commits and carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lema.bus.base import Message, Topics
from lema.bus.kafka import Delivery, KafkaBus, KafkaInbox, RawMessage
from lema.config import BusSettings
from lema.pipeline import STAGE_OF, Worker
from lema.records import Record
from lema.runtime import metrics
from lema.runtime.failures import Backoff, Dependencies, Interrupted, classify, retry_transient
from lema.runtime.wire import WireError, decode, encode

log = logging.getLogger(__name__)

MAX_ERROR_HEADER_CHARS = 2000
RECORD_OVERHEAD_BYTES = 512
"""Room left for the record batch's own framing when deciding whether a message fits `bus.max_message_bytes`."""


@dataclass(frozen=True)
class _Item:
    delivery: Delivery
    record: Record


@dataclass(frozen=True)
class _DeadLetter:
    source_topic: str
    message: RawMessage


@dataclass
class _Outcome:
    messages: list[Message] = field(default_factory=list)
    encoded: list[RawMessage] = field(default_factory=list)
    dead: list[_DeadLetter] = field(default_factory=list)


class OversizedResult(ValueError):
    """A stage produced a record larger than the broker takes: permanent for the input that produced it."""


def message_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """Bytes of key, value and headers."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


class KafkaWorker:
    def __init__(
        self,
        worker: Worker,
        settings: BusSettings,
        *,
        client_id: str,
        on_idle: Callable[[], None] | None = None,
        retry_backoff_s: float = 0.5,
        dependencies: Dependencies | None = None,
    ) -> None:
        """`on_idle` runs whenever a poll finds nothing new (the dataset writer consolidates its files then);
        `dependencies` is told when the broker, store or an LLM goes down or comes back (health follows it)."""
        self.worker = worker
        self.settings = settings
        self.group = settings.group_prefix + worker.name
        self.client_id = client_id
        self.on_idle = on_idle
        self.retry_backoff_s = retry_backoff_s
        self.dependencies = dependencies or Dependencies(worker.name)
        self.stop = threading.Event()
        self._bus: KafkaBus | None = KafkaBus(settings, client_id=client_id)
        self.inbox = KafkaInbox(settings, self.group, list(worker.inputs), client_id=client_id)
        self._inbox_stale, self._inbox_generation = False, 0
        self._processing = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{worker.name}-batch")

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, poll_timeout_s: float = 0.5) -> None:
        """Consume until `stop` is set; a batch in progress is finished and committed first (unless it is waiting
        for a dependency: then it is left uncommitted, to be redelivered)."""
        self.stop = stop
        log.info("%s: consuming %s as group %s", self.worker.name, ", ".join(self.worker.inputs), self.group)
        try:
            while not stop.is_set():
                self.step(poll_timeout_s)
        except Interrupted as exc:
            log.info("%s: %s; the batch in hand stays uncommitted", self.worker.name, exc)
        finally:
            self.close()

    def step(self, poll_timeout_s: float) -> int:
        """One poll -> process -> produce -> commit cycle; returns how many messages it consumed."""
        deliveries = retry_transient(lambda: self._poll(poll_timeout_s), self.dependencies, self.stop)
        self._report_lag()
        if not deliveries:
            if self.on_idle is not None:
                retry_transient(self.on_idle, self.dependencies, self.stop)
            return 0
        generation = self._inbox_generation
        batch = self._processing.submit(self._handle, deliveries)
        try:
            self.inbox.wait_paused(batch)
        except Exception as exc:  # the consumer failed while keeping the group: the batch still finishes
            if classify(exc) is None:
                raise
            self._drop_inbox_if_transient(exc)
            batch.result()
        retry_transient(lambda: self._commit(deliveries, generation), self.dependencies, self.stop)
        return len(deliveries)

    def close(self) -> None:
        self._processing.shutdown(wait=True)
        if not self._inbox_stale:
            self.inbox.close()
        if self._bus is not None:
            self._bus.close(timeout_s=None if self.dependencies.all_up else 0)

    # -- the consumer and producer, rebuilt when the broker invalidated them ----------------------------------
    def _poll(self, timeout_s: float) -> list[Delivery]:
        self._ensure_inbox()
        try:
            return self.inbox.poll(timeout_s)
        except Exception as exc:
            self._drop_inbox_if_transient(exc)
            raise

    def _commit(self, deliveries: Sequence[Delivery], generation: int) -> None:
        """Commit the batch, unless the consumer that polled it was replaced: its replacement rejoins the group
        from the last commit, so the batch is redelivered (its results, already acknowledged, are deduplicated)."""
        if generation != self._inbox_generation or self._inbox_stale:
            log.info("%s: the consumer was rebuilt; the batch will be redelivered", self.worker.name)
            return
        try:
            self.inbox.commit(deliveries)  # False (a rebalance took the partitions): the new owner redoes the batch
        except Exception as exc:
            self._drop_inbox_if_transient(exc)
            raise

    def _drop_inbox_if_transient(self, exc: Exception) -> None:
        """The broker invalidated this member: close it; the next poll builds a fresh one, which rejoins."""
        if classify(exc) is None:
            return
        self._inbox_stale = True
        try:
            self.inbox.close()
        except Exception as close_error:  # closing a member the broker already dropped may fail too
            log.debug("%s: closing the old consumer: %s", self.worker.name, close_error)

    def _ensure_inbox(self) -> None:
        if self._inbox_stale:
            self.inbox = KafkaInbox(self.settings, self.group, list(self.worker.inputs), client_id=self.client_id)
            self._inbox_stale = False
            self._inbox_generation += 1

    def _publish(self, messages: Sequence[RawMessage]) -> None:
        """Publish and wait for every acknowledgement; after a failure the producer is rebuilt on the next try."""
        if self._bus is None:
            self._bus = KafkaBus(self.settings, client_id=self.client_id)
        try:
            self._bus.publish_raw(messages)
        except Exception:
            self._bus.close(timeout_s=0)
            self._bus = None
            raise

    # -- one batch (runs on the processing thread) -------------------------------------------------------------
    def _handle(self, deliveries: Sequence[Delivery]) -> None:
        by_topic: dict[str, list[_Item]] = {}
        dead: list[_DeadLetter] = []
        for delivery in deliveries:
            size = message_size(delivery.key, delivery.value, delivery.headers)
            if not self._fits(size):
                limit = self.settings.max_message_bytes
                error = f"oversized message: {size} bytes, more than bus.max_message_bytes={limit}"
                log.warning("%s: dead-lettering %s", self.worker.name, self._where(delivery, error))
                dead.append(self._dead_letter(delivery, error, attempts=1))
                continue
            try:
                by_topic.setdefault(delivery.topic, []).append(_Item(delivery, self._decode(delivery)))
            except WireError as exc:
                log.warning("%s: dead-lettering %s", self.worker.name, self._where(delivery, str(exc)))
                dead.append(self._dead_letter(delivery, f"malformed message: {exc}", attempts=1))
        produced: list[tuple[str, Message]] = []
        encoded: list[RawMessage] = []
        for topic, items in by_topic.items():
            stage = STAGE_OF.get((self.worker.name, topic), self.worker.name)
            started = time.perf_counter()
            outcome = self._process(topic, items)
            metrics.STAGE_BATCH_DURATION.labels(stage).observe(time.perf_counter() - started)
            metrics.STAGE_RECORDS_IN.labels(stage, topic).inc(len(items))
            produced += [(stage, message) for message in outcome.messages]
            encoded += outcome.encoded
            dead += outcome.dead
        outgoing = encoded + [letter.message for letter in dead]
        retry_transient(lambda: self._publish(outgoing), self.dependencies, self.stop)
        # Counted once the broker has acknowledged them.
        for stage, message in produced:
            metrics.STAGE_RECORDS_OUT.labels(stage, message.topic).inc()
        metrics.observe_outputs(message for _, message in produced)
        for letter in dead:
            metrics.DEAD_LETTERS.labels(self.group, letter.source_topic).inc()

    def _decode(self, delivery: Delivery) -> Record:
        record = decode(delivery.value)
        expected = self.worker.inputs[delivery.topic]
        if not isinstance(record, expected):
            raise WireError(
                f"expected a {expected.__name__} on topic {delivery.topic!r}, got a {type(record).__name__}"
            )
        return record

    def _process(self, topic: str, items: Sequence[_Item]) -> _Outcome:
        """Process the batch, waiting out unavailable dependencies; a permanent failure is tried `max_attempts`
        times, then item by item so only the culprits are dead-lettered."""
        error = ""
        backoff = Backoff(self.retry_backoff_s)
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return retry_transient(lambda: self._attempt(topic, items), self.dependencies, self.stop)
            except Interrupted:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s: %d message(s) from %s failed (try %d): %s", self.worker.name, len(items), topic, attempt, error
                )
                if attempt < self.settings.max_attempts and self.stop.wait(backoff.next_delay()):
                    raise Interrupted("stopped between tries") from exc
        if len(items) == 1:
            return _Outcome(dead=[self._dead_letter(items[0].delivery, error, self.settings.max_attempts)])
        outcome = _Outcome()
        for item in items:
            single = self._process(topic, [item])
            outcome.messages += single.messages
            outcome.encoded += single.encoded
            outcome.dead += single.dead
        return outcome

    def _attempt(self, topic: str, items: Sequence[_Item]) -> _Outcome:
        messages = self.worker.process(topic, [item.record for item in items])
        encoded = [RawMessage(m.topic, m.key.encode(), encode(m.record), []) for m in messages]
        limit = self.settings.max_message_bytes
        for raw in encoded:
            size = message_size(raw.key, raw.value, raw.headers)
            if not self._fits(size):
                raise OversizedResult(f"a {raw.topic} result of {size} bytes exceeds bus.max_message_bytes={limit}")
        return _Outcome(messages, encoded)

    def _dead_letter(self, delivery: Delivery, error: str, attempts: int) -> _DeadLetter:
        """The original key and bytes, bound for the dead-letter topic, with headers naming the error and source;
        the payload (then the key) is left out when the letter would not fit `bus.max_message_bytes`."""
        size = message_size(delivery.key, delivery.value, delivery.headers)
        headers = [
            ("lema-error", error[:MAX_ERROR_HEADER_CHARS].encode()),
            ("lema-source-topic", (self.settings.topic_prefix + delivery.topic).encode()),
            ("lema-source-partition", str(delivery.partition).encode()),
            ("lema-source-offset", str(delivery.offset).encode()),
            ("lema-source-size", str(size).encode()),
            ("lema-attempts", str(attempts).encode()),
            ("lema-consumer-group", self.group.encode()),
        ]
        key, value = delivery.key, delivery.value
        if not self._fits(message_size(key, value, headers)):
            value = None
            headers.append(("lema-payload-dropped", b"too large for the dead-letter topic"))
            if not self._fits(message_size(key, value, headers)):
                key = None
        return _DeadLetter(delivery.topic, RawMessage(Topics.DLQ, key, value, headers))

    def _fits(self, size: int) -> bool:
        return size + RECORD_OVERHEAD_BYTES <= self.settings.max_message_bytes

    def _where(self, delivery: Delivery, error: str) -> str:
        return f"{delivery.topic}[{delivery.partition}]@{delivery.offset}: {error}"

    def _report_lag(self) -> None:
        """After every poll: the numbers come from the last fetch, so this costs no request."""
        for topic, lag in self.inbox.lag().items():
            metrics.KAFKA_CONSUMER_LAG.labels(self.group, topic).set(lag)
