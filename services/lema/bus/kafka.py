"""The Kafka bus: a producer that waits for acknowledgements, a consumer-group member with manual commits, topics.

Two clients implement it, chosen by `bus.client`: librdkafka (`confluent-kafka`, `lema.bus.rdkafka`, the default)
and kafka-python (`lema.bus.kafka_python`); `kafka_bus`, `kafka_inbox` and `kafka_log` are the one way to build
either. Topic names get `bus.topic_prefix`; consumer groups are `bus.group_prefix + <service>`. Messages are keyed
by the deterministic record id and carry a `lema.v1.Envelope` (see `lema.runtime.wire`), so a redelivered or
re-produced message is the same message and every consumer can treat a repeated key as a no-op.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol, TypeVar

from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from lema.bus.base import Message
from lema.config import BusSettings

log = logging.getLogger(__name__)

KEEPALIVE_S = 1.0
"""While a batch is processed, the consumer polls (paused) at least this often."""
COMMIT_TIMEOUT_MS = 10_000
"""A commit that cannot reach the group coordinator gives up (a transient error) instead of blocking forever."""
LOG_READ_TIMEOUT_S = 60.0
"""A `TopicLog.read` that cannot reach the end it was asked for by then fails (a transient error)."""
Headers = list[tuple[str, bytes]]
T = TypeVar("T")
Partition = tuple[str, int]
"""An unprefixed topic name and a partition number."""
PositionsOnAssign = Callable[[Sequence[Partition]], Mapping[Partition, int]]
"""Given newly assigned partitions, the offsets to start from (partitions left out start at the group's commit)."""


class BusError(RuntimeError):
    """The broker did not accept a message (after the producer's own retries) or could not be reached."""


class Delivery(NamedTuple):
    """One consumed message, with where it came from (for offsets and dead letters). A named tuple: one is built
    for every message consumed, at a third of a frozen dataclass's cost."""

    topic: str
    """The topic name without the prefix, e.g. 'paths'."""
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


class RawMessage(NamedTuple):
    """A message produced as bytes: dead letters keep the original key and value untouched."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


class Acks(Protocol):
    """The broker's acknowledgements for the messages of one `KafkaBus.send`."""

    def wait(self) -> None:
        """Return once the broker has acknowledged every one of them; raise `BusError` (from the client's error)
        when one of them was not. librdkafka waits for this send's messages only; kafka-python flushes the producer,
        so it may wait for messages other sends queued meanwhile as well."""
        ...

    def done(self) -> bool:
        """Without blocking: whether the broker has answered for every one of them, so that `wait` returns (or
        raises) at once. librdkafka hands out the answers that arrived first."""
        ...


class KafkaBus(Protocol):
    """Produces records (and dead letters). `send` returns as soon as the messages are queued, so a worker can
    process its next batch while the broker acknowledges this one; `publish` and `publish_raw` wait for the
    acknowledgements."""

    def publish(self, messages: Sequence[Message]) -> None: ...

    def send(self, messages: Sequence[RawMessage]) -> Acks:
        """Queue the messages; raises `BusError` when the client refuses one at once."""
        ...

    def publish_raw(self, messages: Sequence[RawMessage]) -> None:
        """`send` and wait for the acknowledgements."""
        ...

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and close; `timeout_s` bounds the wait (a producer the broker invalidated is closed with 0)."""
        ...


class KafkaInbox(Protocol):
    """A consumer-group member with manual commits: offsets advance only when `commit` is called."""

    group: str

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Delivery]:
        """Up to `max_records` messages (default: `bus.batch_size`), waiting at most `timeout_s` for the first."""
        ...

    def commit(self, deliveries: Sequence[Delivery], wait: bool = True) -> bool:
        """Commit past the highest offset delivered on each partition; False if a rebalance took them away.

        Then the partitions' new owner consumes the batch again: its results are produced twice, with the same
        keys, which every consumer already treats as one. Without `wait` the commit is only sent, so the result
        says only what is known at once: a commit the coordinator refuses or that fails is logged, and covered by
        the next one or redelivered the same way.
        """
        ...

    def wait_paused(self, future: Future[T], keep: int) -> T:
        """The result of `future` (a batch being processed), staying in the group however long it takes.

        Kafka evicts a member that does not poll within `max_poll_interval_ms`. A batch not done `KEEPALIVE_S`
        after the last poll is waited for with every partition paused, polling now and then: that keeps the member
        alive without fetching. Partitions a rebalance assigns meanwhile are paused too, and fetched from where the
        consumer stopped once it resumes. Up to `keep` messages already fetched when the pause began (the most the
        caller will take once the wait ends) are handed out by the next polls without fetching them again.
        """
        ...

    def lag(self) -> dict[str, int]:
        """Messages behind the end of each assigned topic (summed over its partitions), by unprefixed topic.

        Uses the high watermark of the latest fetch (no extra request); partitions not fetched yet count as 0.
        """
        ...

    def close(self) -> None: ...


class TopicLog(Protocol):
    """Partition 0 of a topic, read from its start and appended to: state that every replica holds alike (the
    evolver's), because every replica applies the same entries in the same order."""

    def append(self, entries: Sequence[tuple[bytes, bytes]]) -> int:
        """Append (key, value) entries and wait for the broker's acknowledgement; returns the offset of the last
        one (-1: none). Raises `BusError` when one was not acknowledged."""
        ...

    def read(self, until: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The (key, value) entries after those read so far, at least up to offset `until` (exclusive; default: the
        end of the log now), and any fetched with them. Raises `BusError` when they cannot be read within
        `LOG_READ_TIMEOUT_S`."""
        ...

    def close(self) -> None: ...


def keepalive_wait_s(polled_at: float) -> float:
    """How long `wait_paused` may wait before it pauses and polls: `KEEPALIVE_S` counted from the last poll (at
    `polled_at`, `time.monotonic`), so a wait that begins late still polls in time."""
    return max(0.0, polled_at + KEEPALIVE_S - time.monotonic())


def kafka_bus(settings: BusSettings, client_id: str) -> KafkaBus:
    """A producer of the `bus.client` kind."""
    if settings.client == "librdkafka":
        from lema.bus.rdkafka import RdKafkaBus

        return RdKafkaBus(settings, client_id)
    from lema.bus.kafka_python import KafkaPythonBus

    return KafkaPythonBus(settings, client_id)


def kafka_inbox(
    settings: BusSettings,
    group: str,
    topics: Sequence[str],
    client_id: str,
    on_assign: PositionsOnAssign | None = None,
) -> KafkaInbox:
    """A consumer-group member of the `bus.client` kind. `on_assign`: for a consumer whose sink keeps its own
    offsets (the dataset table), where each newly assigned partition starts; it runs on the polling thread, inside
    `poll`."""
    if settings.client == "librdkafka":
        from lema.bus.rdkafka import RdKafkaInbox

        return RdKafkaInbox(settings, group, topics, client_id, on_assign)
    from lema.bus.kafka_python import KafkaPythonInbox

    return KafkaPythonInbox(settings, group, topics, client_id, on_assign)


def kafka_log(settings: BusSettings, topic: str, client_id: str) -> TopicLog:
    """A `TopicLog` of the `bus.client` kind over `topic` (its full name, prefix included)."""
    if settings.client == "librdkafka":
        from lema.bus.rdkafka import RdKafkaLog

        return RdKafkaLog(settings, topic, client_id)
    from lema.bus.kafka_python import KafkaPythonLog

    return KafkaPythonLog(settings, topic, client_id)


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


def ensure_topics(
    settings: BusSettings,
    names: Iterable[str],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create the (prefixed) topics that do not exist yet, with topic `configs` if given; existing ones are left as
    they are. A `replication_factor` of -1 takes the broker's default."""
    admin = KafkaAdminClient(**client_options(settings), client_id="lema-admin")
    try:
        existing = set(admin.list_topics())
        missing = [settings.topic_prefix + n for n in names if settings.topic_prefix + n not in existing]
        if missing:
            try:
                spec: dict[str, Any] = {"num_partitions": partitions, "replication_factor": replication_factor}
                if configs:
                    spec["configs"] = dict(configs)
                admin.create_topics({name: spec for name in missing})
                log.info("created topics %s", ", ".join(missing))
            except TopicAlreadyExistsError:
                pass  # another replica created them first
    finally:
        admin.close()
