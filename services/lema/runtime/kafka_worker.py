"""A stage worker in a Kafka consumer group: consume batches, process them, produce the results, then commit.

One thread polls the consumer, settles batches and commits them. A worker that processes one batch at a time
(`batches_in_flight` 1: every stage but sample and correct against a real LLM server) processes it on that thread
too: a thread of its own only added hand-overs of the GIL to every batch and every delivery report (check over
Kafka ran at 0.36x of calling it directly that way, 0.47x this way: medians of paired rounds). The sampler and
corrector against a real server process up to `batches_in_flight` batches at once on processing threads (enough to
keep a batching server's `max_concurrency` requests in flight across batch boundaries). Either way one batch more
waits for the broker to acknowledge its results while the next one is processed: the round trip costs a cheap
stage about as much as the stage itself. Delivery reports are read between polls without blocking, and batches are
committed in the order they were polled, without waiting for the answer (a failed commit is covered by the next
one, or the batch is redelivered), except when the worker finishes. Offsets are committed only after the broker
has acknowledged every result of the batch, so a crash at any point redelivers the batches not committed
(at-least-once); results are keyed by deterministic record ids, so a redelivered batch produces the same messages
and the sink keeps each record once.

Whenever the polling thread is busy (processing a batch, waiting for one, for acknowledgements, for a dependency to
come back), a keepalive thread holds its place in the group: after `KEEPALIVE_S` without a poll it pauses the
partitions and polls now and then (`KafkaInbox.wait_paused`), so a batch may take longer than `max_poll_interval_ms`.

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
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from lema.bus.base import Message, Topics
from lema.bus.kafka import (
    Acks,
    Delivery,
    KafkaBus,
    KafkaInbox,
    PositionsOnAssign,
    RawMessage,
    kafka_bus,
    kafka_inbox,
)
from lema.config import BusSettings
from lema.pipeline import STAGE_OF, Worker
from lema.records import Record
from lema.runtime import metrics
from lema.runtime.failures import Backoff, Dependencies, Interrupted, classify, retry_transient
from lema.runtime.wire import WireError, decode, encode

log = logging.getLogger(__name__)

MAX_ERROR_HEADER_CHARS = 2000
LAG_REPORT_INTERVAL_S = 1.0
"""Consumer lag is read at most this often: scrapes come every 15-30 s, and a read costs a cheap stage about 2%."""
RECORD_OVERHEAD_BYTES = 512
"""Room left for the record batch's own framing when deciding whether a message fits `bus.max_message_bytes`."""
KEEPALIVE_TICK_S = 0.1
"""How often the keepalive thread looks whether the polling thread is busy. `wait_paused` counts its wait from the
last poll, so taking over late costs nothing as long as it is well under `KEEPALIVE_S`."""


class _Item(NamedTuple):
    delivery: Delivery
    record: Record


@dataclass(frozen=True)
class _Sent:
    """Results queued on a producer, not yet known to be acknowledged."""

    bus: KafkaBus
    acks: Acks


@dataclass(frozen=True)
class _DeadLetter:
    source_topic: str
    message: RawMessage


@dataclass
class _Outcome:
    messages: list[Message] = field(default_factory=list)
    encoded: list[RawMessage] = field(default_factory=list)
    dead: list[_DeadLetter] = field(default_factory=list)


@dataclass(frozen=True)
class _Processed:
    """A batch's results, to be counted once the broker has acknowledged them."""

    outgoing: list[RawMessage]
    produced: list[Message]
    produced_by: Counter[tuple[str, str]]
    """(stage, output topic) -> messages."""
    dead: list[_DeadLetter]


@dataclass
class _Ready:
    """A processed batch and its results' send: None until they are queued on a producer that took them."""

    processed: _Processed
    sent: _Sent | None


@dataclass(frozen=True)
class _InFlight:
    """A polled batch in hand: committed once it is processed and its results are acknowledged, unless its consumer
    was replaced."""

    deliveries: Sequence[Delivery]
    generation: int
    ready: Future[_Ready]


class OversizedResult(ValueError):
    """A stage produced a record larger than the broker takes: permanent for the input that produced it."""


def message_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """Bytes of key, value and headers."""
    size = len(key or b"") + len(value or b"")
    return size + sum(len(k) + len(v) for k, v in headers) if headers else size


class _Keepalive:
    """Holds the consumer's place in its group while the polling thread is `busy` with anything but the consumer.

    A thread looks every `KEEPALIVE_TICK_S`; finding the polling thread busy it waits with `wait_paused` until the
    busy spell ends. It only touches the consumer inside a busy spell, which ends only once it has let go: the two
    threads never use the consumer at once. A failure of the consumer meanwhile is kept for the polling thread
    (`take_error`)."""

    def __init__(self, name: str, inbox: Callable[[], KafkaInbox | None], keep: int) -> None:
        self._inbox, self._keep = inbox, keep
        self._lock = threading.Lock()
        self._holding = threading.Lock()
        """Held by the keepalive thread while it uses the consumer."""
        self._busy: Future[None] | None = None
        self._error: Exception | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-keepalive", daemon=True)
        self._thread.start()

    @contextmanager
    def busy(self) -> Iterator[None]:
        spell: Future[None] = Future()
        with self._lock:
            self._busy = spell
        try:
            yield
        finally:
            with self._lock:
                self._busy = None
            spell.set_result(None)
            with self._holding:  # the keepalive thread has let go of the consumer
                pass

    def take_error(self) -> Exception | None:
        """The consumer's failure during the last busy spell, if any."""
        error, self._error = self._error, None
        return error

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._closed.wait(KEEPALIVE_TICK_S):
            with self._lock:
                spell, inbox = self._busy, self._inbox()
                if spell is None or inbox is None:
                    continue
                self._holding.acquire()
            try:
                inbox.wait_paused(spell, self._keep)
            except Exception as exc:  # the consumer failed: leave it alone until this spell is over
                self._error = exc
            finally:
                self._holding.release()
            spell.result()


class KafkaWorker:
    def __init__(
        self,
        worker: Worker,
        settings: BusSettings,
        *,
        client_id: str,
        on_batch: Callable[[Sequence[Delivery]], None] | None = None,
        on_assign: PositionsOnAssign | None = None,
        retry_backoff_s: float = 0.5,
        dependencies: Dependencies | None = None,
        batches_in_flight: int = 1,
    ) -> None:
        """`on_batch` runs once a batch's results are published, before its offsets are committed; `on_assign`
        positions newly assigned partitions (both for the dataset writer, whose table commits rows together with
        the offsets they came from, one batch at a time); `dependencies` is told when the broker, store or an LLM
        goes down or comes back (health follows it); `batches_in_flight` is `lema.pipeline.batches_in_flight` for
        the worker and `bus.batch_size`: how many batches are processed at once (1: on the polling thread). Without
        `on_batch` one more batch is in hand, waiting for its acknowledgements; with it, a batch is processed only
        once the hook has run for the one before (the dataset writer's rows are committed with the offsets of the
        batch they came from)."""
        self.worker = worker
        self.settings = settings
        self.group = settings.group_prefix + worker.name
        self.client_id = client_id
        self.on_batch = on_batch
        self.on_assign = on_assign
        self.retry_backoff_s = retry_backoff_s
        self.dependencies = dependencies or Dependencies(worker.name)
        self.stop = threading.Event()
        self._bus: KafkaBus | None = kafka_bus(settings, client_id=client_id)
        self._bus_lock = threading.Lock()
        self.inbox = self._new_inbox()
        self._inbox_stale, self._inbox_generation = False, 0
        self.depth = batches_in_flight if on_batch is not None else batches_in_flight + 1
        self._window: deque[_InFlight] = deque()
        self._lag_reported_at = -LAG_REPORT_INTERVAL_S
        self._processing = (
            ThreadPoolExecutor(max_workers=batches_in_flight, thread_name_prefix=f"{worker.name}-batch")
            if batches_in_flight > 1
            else None
        )
        self._keepalive = _Keepalive(worker.name, self._live_inbox, keep=self.depth * settings.batch_size)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, poll_timeout_s: float = 0.5) -> None:
        """Consume until `stop` is set; batches in progress are finished and committed first (unless one is waiting
        for a dependency: then it and those polled after it are left uncommitted, to be redelivered)."""
        self.stop = stop
        log.info("%s: consuming %s as group %s", self.worker.name, ", ".join(self.worker.inputs), self.group)
        try:
            while not stop.is_set():
                self.step(poll_timeout_s)
            self.finish()
        except Interrupted as exc:
            log.info("%s: %s; the batches in hand stay uncommitted", self.worker.name, exc)
        finally:
            self.close()

    def step(self, poll_timeout_s: float) -> int:
        """Poll while the window has room (waiting for messages only when it is empty) and start the polled
        batches; wait for the oldest batch when the window is full or nothing came; commit the settled batches at
        the head together. Returns how many messages it consumed.

        With one batch in flight, each step is one poll -> process -> produce -> commit cycle."""
        consumed = 0
        if len(self._window) < self.depth:
            room = (self.depth - len(self._window)) * self.settings.batch_size
            timeout_s = 0.0 if self._window else poll_timeout_s
            deliveries = retry_transient(lambda: self._poll(timeout_s, room), self.dependencies, self.stop)
            self._report_lag()
            for start in range(0, len(deliveries), self.settings.batch_size):
                self._start(deliveries[start : start + self.settings.batch_size])
            consumed = len(deliveries)
        self._commit_settled(wait=False)
        if self._window and (not consumed or len(self._window) >= self.depth):
            self._wait_for_head()
            self._commit_settled(wait=False)
        return consumed

    def finish(self) -> None:
        """Wait for the batches in hand and commit them, waiting for the commits."""
        while self._window:
            self._wait_for_head()
            self._commit_settled(wait=True)

    def close(self) -> None:
        if self._processing is not None:
            self._processing.shutdown(wait=True)
        self._keepalive.close()
        if not self._inbox_stale:
            self.inbox.close()
        if self._bus is not None:
            self._bus.close(timeout_s=None if self.dependencies.all_up else 0)

    # -- the consumer and producer, rebuilt when the broker invalidated them ----------------------------------
    def _poll(self, timeout_s: float, max_records: int) -> list[Delivery]:
        self._ensure_inbox()
        try:
            return self.inbox.poll(timeout_s, max_records)
        except Exception as exc:
            self._drop_inbox_if_transient(exc)
            raise

    @contextmanager
    def _busy(self) -> Iterator[None]:
        """Anything but the consumer, with the keepalive holding the member's place in the group meanwhile; a
        consumer that failed meanwhile is rebuilt by the next poll (a transient failure), else its error raised."""
        with self._keepalive.busy():
            yield
        error = self._keepalive.take_error()
        if error is not None:
            if classify(error) is None:
                raise error
            self._drop_inbox_if_transient(error)

    def _start(self, deliveries: Sequence[Delivery]) -> None:
        """Process the batch here, or on a processing thread when several are processed at once."""
        if self._processing is not None:
            ready = self._processing.submit(self._handle, deliveries)
        else:
            ready = Future()
            try:
                with self._busy():
                    ready.set_result(self._handle(deliveries))
            except BaseException as exc:
                if ready.done():  # the batch is done; the consumer failed meanwhile
                    raise
                ready.set_exception(exc)  # raised when the batch reaches the head, after those before it commit
        self._window.append(_InFlight(deliveries, self._inbox_generation, ready))

    def _wait_for_head(self) -> None:
        """Wait until the oldest batch is processed and its results acknowledged (sending them again, on a rebuilt
        producer, while the broker is unavailable)."""
        head = self._window[0]
        with self._busy():
            if head.ready.exception() is None:
                self._publish(head.ready.result())

    def _commit_settled(self, wait: bool) -> None:
        """Commit the batches at the head of the window whose results have all been answered by the broker, in one
        request per consumer that polled them, after running `on_batch` for each; a batch whose processing failed
        raises its error, after those before it are committed."""
        settled: list[_InFlight] = []
        failed: _InFlight | None = None
        while self._window and self._window[0].ready.done():
            batch = self._window[0]
            if batch.ready.exception() is not None:
                failed = self._window.popleft()
                break
            ready = batch.ready.result()
            if ready.sent is None or not ready.sent.acks.done():
                break  # `_wait_for_head` waits for it
            self._window.popleft()
            self._settle(batch.deliveries, ready)
            settled.append(batch)
        for generation in dict.fromkeys(batch.generation for batch in settled):
            deliveries = [d for batch in settled if batch.generation == generation for d in batch.deliveries]
            self._commit_retrying(deliveries, generation, wait)
        if failed is not None:
            failed.ready.result()

    def _settle(self, deliveries: Sequence[Delivery], ready: _Ready) -> None:
        """Make sure of the batch's results (at once, unless the broker refused one: then until it takes them),
        count them and run `on_batch`: then the batch may be committed."""
        with self._busy():
            self._publish(ready)
            if self.on_batch is not None:
                on_batch = self.on_batch
                retry_transient(lambda: on_batch(deliveries), self.dependencies, self.stop)
        self._count(ready.processed)

    def _commit_retrying(self, deliveries: Sequence[Delivery], generation: int, wait: bool) -> None:
        retry_transient(lambda: self._commit(deliveries, generation, wait), self.dependencies, self.stop)

    def _commit(self, deliveries: Sequence[Delivery], generation: int, wait: bool) -> None:
        """Commit the batch, unless the consumer that polled it was replaced: its replacement rejoins the group
        from the last commit, so the batch is redelivered (its results, already acknowledged, are deduplicated)."""
        if generation != self._inbox_generation or self._inbox_stale:
            log.info("%s: the consumer was rebuilt; the batch will be redelivered", self.worker.name)
            return
        try:
            self.inbox.commit(deliveries, wait=wait)  # refused after a rebalance: the new owner redoes the batch
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

    def _live_inbox(self) -> KafkaInbox | None:
        """The consumer, unless the broker invalidated it (the next poll builds its successor)."""
        return None if self._inbox_stale else self.inbox

    def _ensure_inbox(self) -> None:
        if self._inbox_stale:
            self.inbox = self._new_inbox()
            self._inbox_stale = False
            self._inbox_generation += 1

    def _new_inbox(self) -> KafkaInbox:
        inputs = list(self.worker.inputs)
        return kafka_inbox(self.settings, self.group, inputs, client_id=self.client_id, on_assign=self.on_assign)

    def _send(self, messages: Sequence[RawMessage]) -> _Sent:
        """Queue `messages`; after a failure the producer is rebuilt on the next try (of whichever batch in hand
        comes first: they share it)."""
        with self._bus_lock:
            if self._bus is None:
                self._bus = kafka_bus(self.settings, client_id=self.client_id)
            bus = self._bus
        try:
            return _Sent(bus, bus.send(messages))
        except Exception:
            self._drop_bus(bus)
            raise

    def _publish(self, ready: _Ready) -> None:
        """Return once the broker has acknowledged the batch's results, queueing them again while it fails
        transiently."""

        def publish() -> None:
            if ready.sent is None:
                ready.sent = self._send(ready.processed.outgoing)
            try:
                ready.sent.acks.wait()
            except Exception:
                self._drop_bus(ready.sent.bus)
                ready.sent = None
                raise

        retry_transient(publish, self.dependencies, self.stop)

    def _drop_bus(self, bus: KafkaBus) -> None:
        with self._bus_lock:
            if self._bus is bus:
                self._bus = None
        bus.close(timeout_s=0)

    # -- one batch ---------------------------------------------------------------------------------------------
    def _handle(self, deliveries: Sequence[Delivery]) -> _Ready:
        """Process the batch and queue its results (a failure to queue them is left to `_publish`)."""
        processed = self._process_batch(deliveries)
        try:
            return _Ready(processed, self._send(processed.outgoing))
        except Exception as exc:
            log.debug("%s: queueing results failed: %s", self.worker.name, exc)
            return _Ready(processed, None)

    def _process_batch(self, deliveries: Sequence[Delivery]) -> _Processed:
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
        produced: list[Message] = []
        produced_by: Counter[tuple[str, str]] = Counter()
        encoded: list[RawMessage] = []
        for topic, items in by_topic.items():
            stage = STAGE_OF.get((self.worker.name, topic), self.worker.name)
            started = time.perf_counter()
            outcome = self._process(topic, items)
            metrics.STAGE_BATCH_DURATION.labels(stage).observe(time.perf_counter() - started)
            metrics.STAGE_RECORDS_IN.labels(stage, topic).inc(len(items))
            produced += outcome.messages
            produced_by.update((stage, message.topic) for message in outcome.messages)
            encoded += outcome.encoded
            dead += outcome.dead
        return _Processed(encoded + [letter.message for letter in dead], produced, produced_by, dead)

    def _count(self, processed: _Processed) -> None:
        """Results are counted once the broker has acknowledged them, once per label in the batch."""
        for (stage, topic), count in processed.produced_by.items():
            metrics.STAGE_RECORDS_OUT.labels(stage, topic).inc(count)
        metrics.observe_outputs(processed.produced)
        for source, count in Counter(letter.source_topic for letter in processed.dead).items():
            metrics.DEAD_LETTERS.labels(self.group, source).inc(count)

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
        """After a poll, at most every `LAG_REPORT_INTERVAL_S`: the numbers come from the last fetch (no request)."""
        now = time.monotonic()
        if now - self._lag_reported_at < LAG_REPORT_INTERVAL_S:
            return
        lags = self.inbox.lag()
        if lags:  # else nothing is assigned yet: look again after the next poll
            self._lag_reported_at = now
        for topic, lag in lags.items():
            metrics.KAFKA_CONSUMER_LAG.labels(self.group, topic).set(lag)
