"""Following a run on the platform from outside: what each topic holds, what reached the dataset, what was
dead-lettered and what is still in flight; and when the flow has settled.

A consumer outside every group tails every topic and counts distinct records per topic, only those of the type the
topic carries (a valid record on the wrong topic never reaches the dataset, so it is counted apart, as `stray`).
Dead letters are read from the same tail, by source topic and consumer group. The flow has *settled* when every
service's consumer group has committed everything on its input topics (no lag anywhere), the tail read nothing new
since the last check, and the dataset counts what the topics hold minus what the dataset writer dead-lettered (or,
should they differ, the dataset has not changed for `STABLE_CHECKS` checks: the report then shows the difference).
Nothing waits on a record that cannot arrive, so `lema submit` never hangs on a stray record or a dead letter.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from lema.bus.base import Topics
from lema.bus.kafka import client_options
from lema.config import BusSettings, LemaSettings, StoreSettings
from lema.dataset import DatasetSinkError, create_sink
from lema.dataset.base import DatasetSink
from lema.dataset.reader import records_per_topic
from lema.pipeline import CheckerWorker, CorrectorWorker, DatasetWriterWorker, EvolverWorker, SamplerWorker
from lema.records import Record
from lema.runtime.wire import WireError, decode

QUIET_S = 1.0
"""How long the tail must read nothing new before the flow can count as settled."""
STABLE_CHECKS = 5
"""Settle anyway once lag is zero and the dataset counts have not changed for this many checks."""

SERVICE_INPUTS: Mapping[str, Sequence[str]] = {
    worker.name: list(worker.inputs)
    for worker in (SamplerWorker, CheckerWorker, CorrectorWorker, EvolverWorker, DatasetWriterWorker)
}
"""The topics each service's consumer group reads."""
TOPIC_RECORDS: Mapping[str, type[Record]] = {
    topic: record
    for worker in (SamplerWorker, CheckerWorker, CorrectorWorker, EvolverWorker, DatasetWriterWorker)
    for topic, record in worker.inputs.items()
}
"""The record type each topic carries."""


@dataclass
class FlowReport:
    """Per topic: distinct records on it, stray (wrong type), in the dataset, dead-lettered, still in flight."""

    on_topic: dict[str, int]
    stray: dict[str, int]
    in_dataset: dict[str, int] | None
    dead_lettered: dict[str, int]
    in_flight: dict[str, int]
    new_dead_letters: int = 0
    differences: dict[str, tuple[int, int]] = field(default_factory=dict)
    """topic -> (expected in the dataset, counted there), where they differ."""

    def lines(self) -> list[str]:
        topics = [t for t in Topics.ALL if t != Topics.DLQ]
        dataset = self.in_dataset or {}
        rows = [f"  {'topic':<22}{'on topic':>9}{'dataset':>9}{'dlq':>6}{'in flight':>10}{'stray':>7}"]
        for topic in topics:
            in_dataset = str(dataset[topic]) if topic in dataset else "-"
            rows.append(
                f"  {topic:<22}{self.on_topic.get(topic, 0):>9}{in_dataset:>9}{self.dead_lettered.get(topic, 0):>6}"
                f"{self.in_flight.get(topic, 0):>10}{self.stray.get(topic, 0):>7}"
            )
        for topic, (expected, counted) in self.differences.items():
            rows.append(f"  ! {topic}: {expected} record(s) expected in the dataset, {counted} there")
        return rows


class FlowTracker:
    def __init__(
        self,
        settings: BusSettings,
        store: StoreSettings,
        run: str,
        services: Sequence[str] = tuple(SERVICE_INPUTS),
    ) -> None:
        """Track the run `run`, whose flow passes through `services` (all of them, unless a test runs only some)."""
        self.settings, self.store, self.run = settings, store, run
        self._sink: DatasetSink | None = None
        self.groups = {settings.group_prefix + name: SERVICE_INPUTS[name] for name in services}
        self.writer_group = settings.group_prefix + DatasetWriterWorker.name
        self.records: dict[str, set[str]] = {topic: set() for topic in Topics.ALL}
        self.stray: Counter[str] = Counter()
        self.letters: set[tuple[str, str, str]] = set()
        """(source topic, consumer group, key) of every dead letter."""
        self._admin = KafkaAdminClient(**client_options(settings), client_id="lema-progress")
        self._consumer = KafkaConsumer(**client_options(settings), enable_auto_commit=False, fetch_max_wait_ms=100)
        self._partitions = [
            TopicPartition(settings.topic_prefix + topic, partition)
            for topic in Topics.ALL
            for partition in sorted(self._consumer.partitions_for_topic(settings.topic_prefix + topic) or ())
        ]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)
        self._last_ends: dict[TopicPartition, int] | None = None
        self._last_dataset: dict[str, int] | None = None
        self._stable = 0
        self._lag: dict[str, int] = {}
        self.update(quiet_s=QUIET_S)
        self._letters_at_start = len(self.letters)

    def update(self, quiet_s: float = 0.2) -> None:
        """Read every topic until `quiet_s` pass without a new message."""
        while polled := self._consumer.poll(timeout_ms=int(quiet_s * 1000)):
            for tp, messages in polled.items():
                topic = tp.topic[len(self.settings.topic_prefix) :]
                for message in messages:
                    if topic == Topics.DLQ:
                        headers = {k: (v or b"").decode(errors="replace") for k, v in message.headers or ()}
                        source = headers.get("lema-source-topic", "").removeprefix(self.settings.topic_prefix)
                        key = (message.key or b"").decode(errors="replace")
                        self.letters.add((source, headers.get("lema-consumer-group", ""), key))
                        continue
                    try:
                        record = decode(message.value)
                    except WireError:
                        continue  # a worker dead-letters it
                    if isinstance(record, TOPIC_RECORDS.get(topic, Record)):
                        self.records[topic].add(record.key)
                    else:
                        self.stray[topic] += 1

    def counts(self) -> dict[str, int]:
        return {topic: len(keys) for topic, keys in self.records.items() if topic != Topics.DLQ}

    def written(self) -> dict[str, int] | None:
        """Distinct records in the dataset table by topic; None until the writer has created the table.

        The one place that knows where the dataset is: switch it here when its format changes."""
        if self._sink is None:
            try:
                lema = LemaSettings.model_validate({"run": {"name": self.run}})
                self._sink = create_sink(lema, writer="progress", store=self.store, create=False)
            except DatasetSinkError:
                return None
        return records_per_topic(self._sink)

    def report(self) -> FlowReport:
        dead = Counter(source for source, _, _ in self.letters)
        written = self.written()
        return FlowReport(
            on_topic=self.counts(),
            stray=dict(self.stray),
            in_dataset=written,
            dead_lettered=dict(dead),
            in_flight=dict(self._lag),
            new_dead_letters=len(self.letters) - self._letters_at_start,
            differences=self._differences(written or {}),
        )

    def _expected_in_dataset(self, topic: str) -> int:
        """Distinct records on `topic` that the dataset writer did not dead-letter."""
        dropped = {key for source, group, key in self.letters if source == topic and group == self.writer_group}
        return len(self.records[topic] - dropped)

    def _differences(self, dataset: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        expected = {topic: self._expected_in_dataset(topic) for topic in dataset}
        return {topic: (expected[topic], n) for topic, n in dataset.items() if expected[topic] != n}

    def settled(self) -> bool:
        """Nothing in flight, nothing new on the topics, and the dataset counts what it can count."""
        committed = self._admin.list_group_offsets({group: None for group in self.groups})
        # Read on until fetches sent after the commits were read come back empty: whatever a group produced
        # before committing is then behind the tail's position, so a commit cannot hide its own outputs.
        self.update(quiet_s=QUIET_S)
        ends = {tp: self._consumer.position(tp) for tp in self._partitions}
        steady, self._last_ends = ends == self._last_ends, ends
        lag: Counter[str] = Counter()
        for group, topics in self.groups.items():
            offsets = committed.get(group, {})
            for tp in self._partitions:
                topic = tp.topic[len(self.settings.topic_prefix) :]
                if topic in topics:
                    done = offsets.get(tp)
                    lag[topic] += max(0, ends[tp] - (done.offset if done is not None else 0))
        self._lag = {topic: n for topic, n in lag.items() if n}
        dataset = self.written()
        self._stable = self._stable + 1 if dataset is not None and dataset == self._last_dataset else 0
        self._last_dataset = dataset
        if not steady or self._lag or dataset is None:
            return False
        return not self._differences(dataset) or self._stable >= STABLE_CHECKS

    def wait(self, timeout_s: float, on_progress: Callable[[FlowReport], None] | None = None) -> FlowReport:
        """Block until the flow has settled; returns the final report. Raises `TimeoutError` with the report."""
        deadline = time.monotonic() + timeout_s
        while not self.settled():
            if on_progress is not None:
                on_progress(self.report())
            if time.monotonic() > deadline:
                lines = "\n".join(self.report().lines())
                raise TimeoutError(f"the flow did not settle within {timeout_s:.0f}s:\n{lines}")
        return self.report()

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()
