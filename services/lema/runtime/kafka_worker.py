"""A stage worker in a Kafka consumer group: consume a batch, process it, produce the results, then commit.

Offsets are committed only after the broker has acknowledged every result, so a crash at any point redelivers the
batch (at-least-once); results are keyed by deterministic record ids, so a redelivered batch produces the same
messages and the sink keeps each record once. A message that cannot be decoded, or that still fails after
`bus.max_attempts` tries, goes to the dead-letter topic with headers saying why and from where; the worker carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lema.bus.base import Message, Topics
from lema.bus.kafka import Delivery, KafkaBus, KafkaInbox, PositionsOnAssign, RawMessage
from lema.config import BusSettings
from lema.pipeline import STAGE_OF, Worker
from lema.records import Record
from lema.runtime import metrics
from lema.runtime.wire import WireError, decode

log = logging.getLogger(__name__)

MAX_ERROR_HEADER_CHARS = 2000


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
    messages: list[Message]
    dead: list[_DeadLetter]


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
    ) -> None:
        """`on_batch` runs on the processing thread once a batch's results are published, before its offsets are
        committed; `on_assign` positions newly assigned partitions (both for the dataset writer, whose table
        commits rows together with the offsets they came from)."""
        self.worker = worker
        self.settings = settings
        self.group = settings.group_prefix + worker.name
        self.on_batch = on_batch
        self.retry_backoff_s = retry_backoff_s
        self.bus = KafkaBus(settings, client_id=client_id)
        self.inbox = KafkaInbox(settings, self.group, list(worker.inputs), client_id=client_id, on_assign=on_assign)
        self._processing = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{worker.name}-batch")

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, poll_timeout_s: float = 0.5) -> None:
        """Consume until `stop` is set; a batch in progress is finished and committed first."""
        log.info("%s: consuming %s as group %s", self.worker.name, ", ".join(self.worker.inputs), self.group)
        try:
            while not stop.is_set():
                self.step(poll_timeout_s)
        finally:
            self.close()

    def step(self, poll_timeout_s: float) -> int:
        """One poll -> process -> produce -> commit cycle; returns how many messages it consumed."""
        deliveries = self.inbox.poll(poll_timeout_s)
        self._report_lag()
        if not deliveries:
            return 0
        self.inbox.wait_paused(self._processing.submit(self._handle, deliveries))
        self.inbox.commit(deliveries)
        return len(deliveries)

    def close(self) -> None:
        self._processing.shutdown(wait=True)
        self.inbox.close()
        self.bus.close()

    # -- one batch (runs on the processing thread) -------------------------------------------------------------
    def _handle(self, deliveries: Sequence[Delivery]) -> None:
        by_topic: dict[str, list[_Item]] = {}
        dead: list[_DeadLetter] = []
        for delivery in deliveries:
            try:
                by_topic.setdefault(delivery.topic, []).append(_Item(delivery, self._decode(delivery)))
            except WireError as exc:
                log.warning("%s: dead-lettering %s", self.worker.name, self._where(delivery, str(exc)))
                dead.append(self._dead_letter(delivery, f"malformed message: {exc}", attempts=1))
        produced: list[tuple[str, Message]] = []
        for topic, items in by_topic.items():
            stage = STAGE_OF.get((self.worker.name, topic), self.worker.name)
            started = time.perf_counter()
            outcome = self._process(topic, items)
            metrics.STAGE_BATCH_DURATION.labels(stage).observe(time.perf_counter() - started)
            metrics.STAGE_RECORDS_IN.labels(stage, topic).inc(len(items))
            produced += [(stage, message) for message in outcome.messages]
            dead += outcome.dead
        self.bus.publish([message for _, message in produced])
        self.bus.publish_raw([letter.message for letter in dead])
        # Counted once the broker has acknowledged them.
        for stage, message in produced:
            metrics.STAGE_RECORDS_OUT.labels(stage, message.topic).inc()
        metrics.observe_outputs(message for _, message in produced)
        for letter in dead:
            metrics.DEAD_LETTERS.labels(self.group, letter.source_topic).inc()
        if self.on_batch is not None:
            self.on_batch(deliveries)

    def _decode(self, delivery: Delivery) -> Record:
        record = decode(delivery.value)
        expected = self.worker.inputs[delivery.topic]
        if not isinstance(record, expected):
            raise WireError(
                f"expected a {expected.__name__} on topic {delivery.topic!r}, got a {type(record).__name__}"
            )
        return record

    def _process(self, topic: str, items: Sequence[_Item]) -> _Outcome:
        """Try the batch `max_attempts` times; if it keeps failing, retry item by item so only the culprits die."""
        error = ""
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return _Outcome(self.worker.process(topic, [item.record for item in items]), [])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s: %d message(s) from %s failed (try %d): %s", self.worker.name, len(items), topic, attempt, error
                )
                if attempt < self.settings.max_attempts:
                    time.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        if len(items) == 1:
            return _Outcome([], [self._dead_letter(items[0].delivery, error, self.settings.max_attempts)])
        outcome = _Outcome([], [])
        for item in items:
            single = self._process(topic, [item])
            outcome.messages += single.messages
            outcome.dead += single.dead
        return outcome

    def _dead_letter(self, delivery: Delivery, error: str, attempts: int) -> _DeadLetter:
        """The original key and bytes, bound for the dead-letter topic, with headers naming the error and source."""
        headers = [
            ("lema-error", error[:MAX_ERROR_HEADER_CHARS].encode()),
            ("lema-source-topic", (self.settings.topic_prefix + delivery.topic).encode()),
            ("lema-source-partition", str(delivery.partition).encode()),
            ("lema-source-offset", str(delivery.offset).encode()),
            ("lema-attempts", str(attempts).encode()),
            ("lema-consumer-group", self.group.encode()),
        ]
        return _DeadLetter(delivery.topic, RawMessage(Topics.DLQ, delivery.key, delivery.value, headers))

    def _where(self, delivery: Delivery, error: str) -> str:
        return f"{delivery.topic}[{delivery.partition}]@{delivery.offset}: {error}"

    def _report_lag(self) -> None:
        """After every poll: the numbers come from the last fetch, so this costs no request."""
        for topic, lag in self.inbox.lag().items():
            metrics.KAFKA_CONSUMER_LAG.labels(self.group, topic).set(lag)
