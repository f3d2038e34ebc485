"""The Kafka bus on kafka-python (`bus.client: kafka-python`): pure Python, ~10x the CPU per message of librdkafka."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from lema.bus.base import Message
from lema.bus.kafka import (
    COMMIT_TIMEOUT_MS,
    KEEPALIVE_S,
    LOG_READ_TIMEOUT_S,
    BusError,
    Delivery,
    PositionsOnAssign,
    RawMessage,
    T,
    client_options,
    keepalive_wait_s,
)
from lema.config import BusSettings
from lema.runtime.wire import encode

log = logging.getLogger(__name__)


class _Acks:
    """The futures of one `send`."""

    def __init__(self, producer: KafkaProducer, futures: list[FutureRecordMetadata]) -> None:
        self._producer, self._futures = producer, futures

    def done(self) -> bool:
        return all(future.is_done for future in self._futures)

    def wait(self) -> None:
        self._producer.flush()  # sends what lingers now; it also waits for other sends' messages
        try:
            for future in self._futures:
                future.get()  # raises the delivery error, if any
        except KafkaError as exc:
            raise BusError(f"kafka: a message was not acknowledged: {exc}") from exc


class KafkaPythonBus:
    """`lema.bus.kafka.KafkaBus` on kafka-python."""

    def __init__(self, settings: BusSettings, client_id: str) -> None:
        self.prefix = settings.topic_prefix
        self._producer = KafkaProducer(
            **client_options(settings),
            client_id=client_id,
            max_request_size=settings.max_message_bytes,
            enable_idempotence=True,
            acks="all",
            # `publish` sends a batch's results together and flushes: a short linger lets them gather, and large
            # producer batches mean fewer requests, checksums and sender wake-ups per message.
            linger_ms=5,
            batch_size=512 * 1024,
            max_in_flight_requests_per_connection=5,
        )

    def publish(self, messages: Sequence[Message]) -> None:
        self.publish_raw([RawMessage(m.topic, m.key.encode(), encode(m.record), []) for m in messages])

    def publish_raw(self, messages: Sequence[RawMessage]) -> None:
        self.send(messages).wait()

    def send(self, messages: Sequence[RawMessage]) -> _Acks:
        try:
            futures = [
                self._producer.send(self.prefix + m.topic, value=m.value, key=m.key, headers=m.headers)
                for m in messages
            ]
        except KafkaError as exc:
            raise BusError(f"kafka: a message was not accepted: {exc}") from exc
        return _Acks(self._producer, futures)

    def close(self, timeout_s: float | None = None) -> None:
        self._producer.close(timeout=timeout_s)


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """Moves newly assigned partitions to the positions a sink that stores its own offsets holds."""

    def __init__(self, consumer: KafkaConsumer, prefix: str, group: str, positions: PositionsOnAssign) -> None:
        self.consumer, self.prefix, self.group, self.positions = consumer, prefix, group, positions

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        wanted = self.positions([(tp.topic[len(self.prefix) :], tp.partition) for tp in assigned])
        for tp in assigned:
            offset = wanted.get((tp.topic[len(self.prefix) :], tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
        log.info("%s: assigned %d partition(s), %d positioned by the sink", self.group, len(assigned), len(wanted))


class KafkaPythonInbox:
    """`lema.bus.kafka.KafkaInbox` on kafka-python."""

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
        self._polled_at = time.monotonic()
        self._consumer = KafkaConsumer(
            **client_options(settings),
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
        )
        listener = _SeekOnAssign(self._consumer, self.prefix, group, on_assign) if on_assign is not None else None
        self._consumer.subscribe([self.prefix + t for t in topics], listener=listener)

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Delivery]:
        self._polled_at = time.monotonic()
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        deliveries: list[Delivery] = []
        for tp, records in polled.items():
            topic, partition = tp.topic[len(self.prefix) :], tp.partition
            deliveries += [Delivery(topic, partition, r.offset, r.key, r.value, list(r.headers or ())) for r in records]
        return deliveries

    def commit(self, deliveries: Sequence[Delivery], wait: bool = True) -> bool:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for d in deliveries:
            tp = TopicPartition(self.prefix + d.topic, d.partition)
            if tp not in offsets or offsets[tp].offset <= d.offset:
                offsets[tp] = OffsetAndMetadata(d.offset + 1, "", -1)
        if not wait:
            self._consumer.commit_async(offsets, callback=self._committed)  # answered during polls
            return True
        try:  # refused when the coordinator has a newer generation than this member's
            self._consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            log.warning("%s: commit refused after a rebalance; the batch will be redelivered: %s", self.group, exc)
            return False
        return True

    def _committed(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], response: object) -> None:
        """The answer to a commit sent without waiting: an exception when it failed."""
        if isinstance(response, Exception):
            log.warning(
                "%s: a commit failed; the next one covers it, or the batch is redelivered: %s", self.group, response
            )

    def wait_paused(self, future: Future[T], keep: int) -> T:  # kafka-python keeps every fetched record paused
        try:
            return future.result(timeout=keepalive_wait_s(self._polled_at))
        except TimeoutError:
            pass
        # A rebalance meanwhile may hand out fetched records of newly assigned partitions: rewound and paused too.
        self._consumer.pause(*self._consumer.assignment())
        try:
            while True:
                for tp, records in self._consumer.poll(timeout_ms=0).items():
                    self._consumer.seek(tp, records[0].offset)
                    self._consumer.pause(tp)
                try:
                    return future.result(timeout=KEEPALIVE_S)
                except TimeoutError:
                    continue
        finally:
            self._consumer.resume(*self._consumer.paused())

    def lag(self) -> dict[str, int]:
        lag: dict[str, int] = {}
        for tp in self._consumer.assignment():
            topic = tp.topic[len(self.prefix) :]
            highwater = self._consumer.highwater(tp)
            behind = 0 if highwater is None else max(0, highwater - self._consumer.position(tp))
            lag[topic] = lag.get(topic, 0) + behind
        return lag

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaPythonLog:
    """`lema.bus.kafka.TopicLog` on kafka-python."""

    def __init__(self, settings: BusSettings, topic: str, client_id: str) -> None:
        self._partition = TopicPartition(topic, 0)
        self._producer = KafkaProducer(
            **client_options(settings), client_id=client_id, enable_idempotence=True, acks="all", linger_ms=5
        )
        self._consumer = KafkaConsumer(
            **client_options(settings), client_id=client_id, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        self._consumer.assign([self._partition])
        self._consumer.seek_to_beginning(self._partition)

    def append(self, entries: Sequence[tuple[bytes, bytes]]) -> int:
        topic = self._partition.topic
        futures = [self._producer.send(topic, key=key, value=value, partition=0) for key, value in entries]
        _Acks(self._producer, futures).wait()
        return max((future.get().offset for future in futures), default=-1)

    def read(self, until: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The end is the larger of `until` (or the broker's end offset) and the last fetch's high watermark:
        Tansu's end offset is the last batch's base offset + 1, short of the batch's other entries."""
        try:
            end = until if until is not None else self._consumer.end_offsets([self._partition])[self._partition]
        except KafkaError as exc:
            raise BusError(f"kafka: cannot read the end of {self._partition.topic}: {exc}") from exc
        deadline = time.monotonic() + LOG_READ_TIMEOUT_S
        while self._consumer.position(self._partition) < max(end, self._consumer.highwater(self._partition) or 0):
            if time.monotonic() > deadline:
                raise BusError(f"kafka: {self._partition.topic} not read up to offset {end} in {LOG_READ_TIMEOUT_S}s")
            for records in self._consumer.poll(timeout_ms=500, max_records=10_000).values():
                for record in records:
                    yield record.key, record.value

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()
