"""The Kafka bus on librdkafka (`confluent-kafka`, `bus.client: librdkafka`, the default).

librdkafka fetches, batches, checksums and acknowledges in C threads: a message costs a few microseconds of Python
instead of kafka-python's 35-90, which is most of what a cheap stage (check, verify) spends over Kafka. The
guarantees are the kafka-python client's: an idempotent producer whose `publish` waits for every acknowledgement,
manual commits refused for a rebalanced or evicted member, partitions paused while a batch outlasts the poll
interval, and newly assigned partitions started where the sink's own offsets say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage

from lema.bus.base import Message
from lema.bus.kafka import (
    COMMIT_TIMEOUT_MS,
    KEEPALIVE_S,
    LOG_READ_TIMEOUT_S,
    BusError,
    Delivery,
    Partition,
    PositionsOnAssign,
    RawMessage,
    T,
    client_options,
    keepalive_wait_s,
)
from lema.config import BusSettings
from lema.runtime.wire import encode

log = logging.getLogger(__name__)

_RDKAFKA_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}
_REFUSED_COMMITS = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
}
"""The coordinator (or librdkafka) refused a commit because this member no longer holds its generation."""
DELIVERY_TIMEOUT_MS = 120_000
"""As kafka-python's `delivery_timeout_ms`: a message not acknowledged by then fails its `publish` (transient)."""
ACK_POLL_S = 0.05
"""How long one wait for delivery reports blocks before looking at its own count again."""
LOG_FETCH_WAIT_MS = 10
"""How long a `RdKafkaLog` fetch waits at the broker for entries. librdkafka fetches in the background, so reading
back what was just appended waits for the fetch in flight: Kafka answers it as soon as the entries arrive, a broker
that does not (Tansu) only once this wait is over. The price is one empty fetch per wait while the log is idle."""


def rdkafka_options(settings: BusSettings) -> dict[str, Any]:
    """`client_options` (security from the settings and the environment) in librdkafka's names; librdkafka's own
    log lines go to this module's logger."""
    return {_RDKAFKA_NAMES[name]: value for name, value in client_options(settings).items()} | {"logger": log}


class _Acks:
    """The delivery reports of one `send`. librdkafka hands them to callbacks on whichever thread polls the
    producer, so several sends in flight are each told about their own messages."""

    def __init__(self, producer: Producer, expected: int) -> None:
        self._producer = producer
        self._expected = expected
        self.reports: list[tuple[KafkaError | None, int]] = []
        """(error, offset) of each message, appended from any polling thread (list.append is atomic)."""

    def delivered(self, error: KafkaError | None, message: Any) -> None:
        self.reports.append((error, message.offset()))

    def wait(self) -> None:
        while len(self.reports) < self._expected:  # every message gets a report by `message.timeout.ms`
            self._producer.poll(ACK_POLL_S)
        failed = [error for error, _ in self.reports if error is not None]
        if failed:
            error = failed[0]
            raise BusError(f"kafka: {len(failed)} message(s) not acknowledged: {error.str()}") from KafkaException(
                error
            )

    def done(self) -> bool:
        if len(self.reports) < self._expected:
            self._producer.poll(0)
        return len(self.reports) >= self._expected

    @property
    def last_offset(self) -> int:
        """The highest offset acknowledged so far (-1: none)."""
        return max((offset for _, offset in self.reports), default=-1)


class RdKafkaBus:
    """`lema.bus.kafka.KafkaBus` on librdkafka."""

    def __init__(self, settings: BusSettings, client_id: str) -> None:
        self.prefix = settings.topic_prefix
        self._producer = Producer(
            rdkafka_options(settings)
            | {
                "client.id": client_id,
                "enable.idempotence": True,
                "acks": "all",
                # A batch's results are queued in one burst, well under a millisecond: a short linger gathers them
                # without adding much to the wait for their acknowledgements.
                "linger.ms": 1,
                "message.max.bytes": settings.max_message_bytes,
                "message.timeout.ms": DELIVERY_TIMEOUT_MS,
            }
        )

    def publish(self, messages: Sequence[Message]) -> None:
        self.publish_raw([RawMessage(m.topic, m.key.encode(), encode(m.record), []) for m in messages])

    def publish_raw(self, messages: Sequence[RawMessage]) -> None:
        self.send(messages).wait()

    def send(self, messages: Sequence[RawMessage]) -> _Acks:
        acks = _Acks(self._producer, len(messages))
        produce, prefix, delivered = self._producer.produce, self.prefix, acks.delivered
        try:
            for m in messages:
                headers: Any = m.headers or None  # (str, bytes) pairs; the stubs want a wider element type
                while True:
                    try:
                        produce(prefix + m.topic, m.value, m.key, headers=headers, on_delivery=delivered)
                        break
                    except BufferError:  # the local queue is full: let deliveries drain it
                        self._producer.poll(ACK_POLL_S)
        except KafkaException as exc:
            raise BusError(f"kafka: a message was not accepted: {exc}") from exc
        return acks

    def close(self, timeout_s: float | None = None) -> None:
        if timeout_s == 0:
            self._producer.purge()  # an invalidated producer: what it holds is redone by the next one
        self._producer.flush(-1 if timeout_s is None else timeout_s)
        self._producer.close()


class RdKafkaInbox:
    """`lema.bus.kafka.KafkaInbox` on librdkafka."""

    def __init__(
        self,
        settings: BusSettings,
        group: str,
        topics: Sequence[str],
        client_id: str,
        on_assign: PositionsOnAssign | None = None,
    ) -> None:
        self.prefix = settings.topic_prefix
        self.group = group
        self._max_records = settings.batch_size
        self._positions = on_assign
        self._owned: set[tuple[str, int]] = set()
        """(prefixed topic, partition) assigned to this member now: commits for others are refused."""
        self._paused = False
        self._polled_at = time.monotonic()
        self._held: list[KafkaMessage] = []
        """Messages fetched before a paused wait, handed out first by the next polls. librdkafka drops what it fetched
        for a partition when it is paused, and fetching again after the wait takes 0.5-0.9 s on Tansu: meanwhile a
        worker's window, whose head batch just ended, could not refill, and its LLM would wait."""
        self._consumer = Consumer(
            rdkafka_options(settings)
            | {
                "group.id": group,
                "client.id": client_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 3),
                # librdkafka refuses a poll interval shorter than the session timeout.
                "max.poll.interval.ms": max(settings.max_poll_interval_ms, settings.session_timeout_ms),
                "socket.timeout.ms": COMMIT_TIMEOUT_MS,
                "on_commit": self._committed,
            }
        )
        self._consumer.subscribe(
            [self.prefix + t for t in topics], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        cut = len(self.prefix)
        wanted: Mapping[Partition, int] = {}
        if self._positions is not None:
            wanted = self._positions([(tp.topic[cut:], tp.partition) for tp in partitions])
            for tp in partitions:
                offset = wanted.get((tp.topic[cut:], tp.partition))
                if offset is not None:
                    tp.offset = offset
        consumer.assign(partitions)
        # librdkafka keeps a partition's pause across assignments (one taken away while a batch waited would stay
        # paused when it comes back): set it here, paused only while a batch is waited for.
        (consumer.pause if self._paused else consumer.resume)(partitions)
        self._owned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("%s: assigned %d partition(s), %d positioned by the sink", self.group, len(partitions), len(wanted))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned -= {(tp.topic, tp.partition) for tp in partitions}
        self._held = [m for m in self._held if (m.topic(), m.partition()) in self._owned]  # the new owner reads them
        consumer.unassign()
        log.info("%s: %d partition(s) revoked", self.group, len(partitions))

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Delivery]:
        self._polled_at = time.monotonic()
        wanted = max_records or self._max_records
        polled, self._held = self._held[:wanted], self._held[wanted:]
        if not polled:
            first = self._consumer.poll(timeout_s)  # returns as soon as one message is there
            if first is None:
                return []
            polled = [first]
        if len(polled) < wanted:
            polled += self._consumer.consume(wanted - len(polled), timeout=0)
        cut = len(self.prefix)
        return [
            Delivery(m.topic()[cut:], m.partition(), m.offset(), m.key(), m.value(), m.headers() or [])  # type: ignore[index,arg-type]
            for m in self._usable(polled)
        ]

    def _usable(self, messages: list[KafkaMessage]) -> list[KafkaMessage]:
        """`messages` without librdkafka's error events: a fatal one raises; the others librdkafka retries by itself
        (a broker down, a poll interval overrun), so they are logged and dropped."""
        usable: list[KafkaMessage] = []
        for m in messages:
            error = m.error()
            if error is None:
                usable.append(m)
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("%s: %s", self.group, error.str())
        return usable

    def commit(self, deliveries: Sequence[Delivery], wait: bool = True) -> bool:
        ends: dict[tuple[str, int], int] = {}
        for d in deliveries:
            where = (self.prefix + d.topic, d.partition)
            ends[where] = max(ends.get(where, 0), d.offset + 1)
        lost = ends.keys() - self._owned
        if lost:
            log.warning("%s: %d partition(s) were reassigned; their batches will be redelivered", self.group, len(lost))
        offsets = [
            TopicPartition(topic, partition, end)
            for (topic, partition), end in ends.items()
            if (topic, partition) in self._owned
        ]
        if not offsets:
            return not lost
        if not wait:
            self._consumer.commit(offsets=offsets, asynchronous=True)  # answered to `_committed`, during polls
            return not lost
        try:
            committed = self._consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            if exc.args[0].code() not in _REFUSED_COMMITS:
                raise
            log.warning("%s: commit refused after a rebalance; the batch will be redelivered: %s", self.group, exc)
            return False
        for tp in committed:
            if tp.error is not None:
                if tp.error.code() not in _REFUSED_COMMITS:
                    raise KafkaException(tp.error)
                log.warning("%s: commit refused for %s[%d]: %s", self.group, tp.topic, tp.partition, tp.error.str())
                return False
        return not lost

    def _committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The answer to a commit sent without waiting (librdkafka reports only those here, during polls)."""
        errors = [error] if error is not None else [tp.error for tp in partitions if tp.error is not None]
        if errors:
            log.warning(
                "%s: a commit failed; the next one covers it, or the batch is redelivered: %s",
                self.group,
                errors[0].str(),
            )

    def wait_paused(self, future: Future[T], keep: int) -> T:
        try:
            return future.result(timeout=keepalive_wait_s(self._polled_at))
        except TimeoutError:
            pass
        self._paused = True  # partitions assigned meanwhile are paused as they arrive
        if keep > len(self._held):
            self._hold(self._consumer.consume(keep - len(self._held), timeout=0))
        self._consumer.pause(self._consumer.assignment())
        try:
            while True:
                self._hold(self._consumer.consume(self._max_records, timeout=0))  # keeps the member in the group
                try:
                    return future.result(timeout=KEEPALIVE_S)
                except TimeoutError:
                    continue
        finally:
            self._paused = False
            self._consumer.resume(self._consumer.assignment())

    def _hold(self, messages: list[KafkaMessage]) -> None:
        self._held += [m for m in self._usable(messages) if (m.topic(), m.partition()) in self._owned]

    def lag(self) -> dict[str, int]:
        lag: dict[str, int] = {}
        cut = len(self.prefix)
        for tp in self._consumer.position(self._consumer.assignment()):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True) or (0, -1)
            behind = max(0, high - tp.offset) if high >= 0 and tp.offset >= 0 else 0
            lag[tp.topic[cut:]] = lag.get(tp.topic[cut:], 0) + behind
        return lag

    def close(self) -> None:
        self._consumer.close()


class RdKafkaLog:
    """`lema.bus.kafka.TopicLog` on librdkafka."""

    def __init__(self, settings: BusSettings, topic: str, client_id: str) -> None:
        options = rdkafka_options(settings) | {"client.id": client_id}
        self._producer = Producer(
            options
            | {"enable.idempotence": True, "acks": "all", "linger.ms": 0, "message.timeout.ms": DELIVERY_TIMEOUT_MS}
        )
        # Assigned, never subscribed: librdkafka wants a group id, but this consumer never joins or commits.
        self._consumer = Consumer(
            options
            | {
                "group.id": client_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",  # an offset gone (retention) restarts the read; it never skips
                "fetch.wait.max.ms": LOG_FETCH_WAIT_MS,
            }
        )
        self._partition = TopicPartition(topic, 0)
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._position = 0
        """The offset after the last entry read."""

    def append(self, entries: Sequence[tuple[bytes, bytes]]) -> int:
        acks = _Acks(self._producer, len(entries))
        topic = self._partition.topic
        try:
            for key, value in entries:
                self._producer.produce(topic, value, key, partition=0, on_delivery=acks.delivered)
        except (KafkaException, BufferError) as exc:
            raise BusError(f"kafka: an entry of {topic} was not accepted: {exc}") from exc
        acks.wait()
        return acks.last_offset

    def read(self, until: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The end is the larger of `until` (or the broker's end offset) and the last fetch's high watermark:
        Tansu's end offset is the last batch's base offset + 1, short of the batch's other entries."""
        topic = self._partition.topic
        try:
            end = until if until is not None else self._high_watermark(cached=False)
        except KafkaException as exc:
            raise BusError(f"kafka: cannot read the end of {topic}: {exc}") from exc
        deadline = time.monotonic() + LOG_READ_TIMEOUT_S
        while self._position < max(end, self._high_watermark(cached=True)):
            if time.monotonic() > deadline:
                raise BusError(f"kafka: {topic} not read up to offset {end} in {LOG_READ_TIMEOUT_S}s")
            first = self._consumer.poll(0.5)
            for message in [first, *self._consumer.consume(10_000, timeout=0)] if first is not None else []:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise BusError(f"kafka: reading {topic}: {error.str()}")
                    log.warning("%s: %s", topic, error.str())
                    continue
                self._position = message.offset() + 1  # type: ignore[operator]
                yield message.key(), message.value()  # type: ignore[misc]

    def _high_watermark(self, cached: bool) -> int:
        """The broker's end offset, or (`cached`) the one the last fetch brought (-1: none yet)."""
        offsets = self._consumer.get_watermark_offsets(self._partition, timeout=10, cached=cached)
        return offsets[1] if offsets else -1

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()
        self._consumer.close()
