"""The Kafka bus (kafka-python): an idempotent producer, a consumer-group member, and topic creation.

Topic names get `bus.topic_prefix`; consumer groups are `bus.group_prefix + <service>`. Messages are keyed by the
deterministic record id and carry a `lema.v1.Envelope` (see `lema.runtime.wire`), so a redelivered or re-produced
message is the same message and every consumer can treat a repeated key as a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from lema.bus.base import Message
from lema.config import BusSettings
from lema.runtime.wire import encode

log = logging.getLogger(__name__)

KEEPALIVE_S = 1.0
"""While a batch is processed, the consumer polls (paused) at least this often."""
COMMIT_TIMEOUT_MS = 10_000
"""A commit that cannot reach the group coordinator gives up (a transient error) instead of blocking forever."""
Headers = list[tuple[str, bytes]]
T = TypeVar("T")
Partition = tuple[str, int]
"""An unprefixed topic name and a partition number."""
PositionsOnAssign = Callable[[Sequence[Partition]], Mapping[Partition, int]]
"""Given newly assigned partitions, the offsets to start from (partitions left out start at the group's commit)."""


class BusError(RuntimeError):
    """The broker did not accept a message (after the producer's own retries) or could not be reached."""


@dataclass(frozen=True)
class Delivery:
    """One consumed message, with where it came from (for offsets and dead letters)."""

    topic: str
    """The topic name without the prefix, e.g. 'paths'."""
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class RawMessage:
    """A message produced as bytes: dead letters keep the original key and value untouched."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def client_options(settings: BusSettings) -> dict[str, Any]:
    """Connection and security options shared by every kafka-python client; SASL credentials come from the
    environment variables the settings name (a missing one is an error naming the variable, never its value)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL_"):
        names = (settings.sasl_username_env, settings.sasl_password_env)
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            raise ValueError(
                f"bus.security_protocol is {settings.security_protocol}: set the environment variable(s) "
                f"{', '.join(missing)} (named by bus.sasl_username_env / bus.sasl_password_env)"
            )
        options |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": os.environ[settings.sasl_username_env],
            "sasl_plain_password": os.environ[settings.sasl_password_env],
        }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        files = {"ssl_cafile": settings.ssl_cafile, "ssl_certfile": settings.ssl_certfile}
        files["ssl_keyfile"] = settings.ssl_keyfile
        options |= {name: str(path) for name, path in files.items() if path is not None}
    return options


def ensure_topics(settings: BusSettings, names: Iterable[str], partitions: int, replication_factor: int) -> None:
    """Create the (prefixed) topics that do not exist yet; existing ones are left as they are."""
    admin = KafkaAdminClient(**client_options(settings), client_id="lema-admin")
    try:
        existing = set(admin.list_topics())
        missing = [settings.topic_prefix + n for n in names if settings.topic_prefix + n not in existing]
        if missing:
            try:
                spec = {"num_partitions": partitions, "replication_factor": replication_factor}
                admin.create_topics({name: spec for name in missing})
                log.info("created topics %s", ", ".join(missing))
            except TopicAlreadyExistsError:
                pass  # another replica created them first
    finally:
        admin.close()


class KafkaBus:
    """Produces records (and dead letters); `publish` returns only when the broker has acknowledged every message."""

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
        futures = [
            self._producer.send(self.prefix + m.topic, value=m.value, key=m.key, headers=m.headers) for m in messages
        ]
        self._producer.flush()
        try:
            for future in futures:
                future.get()  # raises the delivery error, if any
        except KafkaError as exc:
            raise BusError(f"kafka: a message was not acknowledged: {exc}") from exc

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and close; `timeout_s` bounds the wait (a producer the broker invalidated is closed with 0)."""
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


class KafkaInbox:
    """A consumer-group member with manual commits: offsets advance only when `commit` is called."""

    def __init__(
        self,
        settings: BusSettings,
        group: str,
        topics: Sequence[str],
        client_id: str,
        on_assign: PositionsOnAssign | None = None,
    ) -> None:
        """`on_assign`: for a consumer whose sink keeps its own offsets (the dataset table), where each newly
        assigned partition starts; it runs on the polling thread, inside `poll`."""
        self.prefix = settings.topic_prefix
        self.group = group
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
        """Up to `max_records` messages (default: `bus.batch_size`), waiting at most `timeout_s` for the first."""
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        deliveries: list[Delivery] = []
        for tp, records in polled.items():
            topic, partition = tp.topic[len(self.prefix) :], tp.partition
            deliveries += [Delivery(topic, partition, r.offset, r.key, r.value, list(r.headers or ())) for r in records]
        return deliveries

    def commit(self, deliveries: Sequence[Delivery]) -> bool:
        """Commit past the highest offset delivered on each partition; False if a rebalance took them away.

        Then the partitions' new owner consumes the batch again: its results are produced twice, with the same
        keys, which every consumer already treats as one.
        """
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for d in deliveries:
            tp = TopicPartition(self.prefix + d.topic, d.partition)
            if tp not in offsets or offsets[tp].offset <= d.offset:
                offsets[tp] = OffsetAndMetadata(d.offset + 1, "", -1)
        try:
            self._consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            log.warning("%s: commit refused after a rebalance; the batch will be redelivered: %s", self.group, exc)
            return False
        return True

    def wait_paused(self, future: Future[T]) -> T:
        """The result of `future` (a batch being processed), staying in the group however long it takes.

        Kafka evicts a member that does not poll within `max_poll_interval_ms`. A batch that outlasts
        `KEEPALIVE_S` is waited for with every partition paused, polling now and then: that keeps the member alive
        without fetching. Partitions a rebalance assigns meanwhile are rewound and paused too.
        """
        try:
            return future.result(timeout=KEEPALIVE_S)
        except TimeoutError:
            pass
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
        """Messages behind the end of each assigned topic (summed over its partitions), by unprefixed topic.

        Uses the high watermark of the latest fetch (no extra request); partitions not fetched yet count as 0.
        """
        lag: dict[str, int] = {}
        for tp in self._consumer.assignment():
            topic = tp.topic[len(self.prefix) :]
            highwater = self._consumer.highwater(tp)
            behind = 0 if highwater is None else max(0, highwater - self._consumer.position(tp))
            lag[topic] = lag.get(topic, 0) + behind
        return lag

    def close(self) -> None:
        self._consumer.close(autocommit=False)
