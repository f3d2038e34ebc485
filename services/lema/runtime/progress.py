"""Following a run on the platform from outside: what has flowed through each topic, and when the flow has settled.

A consumer outside every group tails all topics and counts distinct records per topic. The flow has *settled* when
every service's consumer group has committed everything on its input topics and the dataset table holds the same
distinct records the topics hold, twice in a row with nothing new in between. `lema submit --follow`
and the platform tests wait on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from lema.bus.base import Topics
from lema.bus.kafka import client_options
from lema.config import BusSettings, LemaSettings, StoreSettings
from lema.dataset import DatasetSinkError, create_sink
from lema.dataset.base import DatasetSink
from lema.dataset.reader import records_per_topic
from lema.pipeline import CheckerWorker, CorrectorWorker, DatasetWriterWorker, EvolverWorker, SamplerWorker
from lema.runtime.wire import WireError, decode

QUIET_S = 1.0
"""How long the tail must read nothing new before the flow can count as settled."""

SERVICE_INPUTS: Mapping[str, Sequence[str]] = {
    worker.name: list(worker.inputs)
    for worker in (SamplerWorker, CheckerWorker, CorrectorWorker, EvolverWorker, DatasetWriterWorker)
}
"""The topics each service's consumer group reads."""


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
        self.records: dict[str, set[str]] = {topic: set() for topic in Topics.ALL}
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

    def update(self, quiet_s: float = 0.2) -> None:
        """Read every topic until `quiet_s` pass without a new message; only records that decode are counted."""
        while polled := self._consumer.poll(timeout_ms=int(quiet_s * 1000)):
            for tp, messages in polled.items():
                topic = tp.topic[len(self.settings.topic_prefix) :]
                for message in messages:
                    try:
                        self.records[topic].add(decode(message.value).key)
                    except WireError:
                        continue  # the worker dead-letters it; it never reaches the dataset

    def counts(self) -> dict[str, int]:
        return {topic: len(keys) for topic, keys in self.records.items()}

    def written(self) -> dict[str, int] | None:
        """Distinct records in the dataset table by topic; None until the writer has created the table."""
        if self._sink is None:
            try:
                lema = LemaSettings.model_validate({"run": {"name": self.run}})
                self._sink = create_sink(lema, writer="progress", store=self.store, create=False)
            except DatasetSinkError:
                return None
        return records_per_topic(self._sink)

    def settled(self) -> bool:
        """Nothing in flight: every group has committed everything, and the table holds every record."""
        committed = self._admin.list_group_offsets({group: None for group in self.groups})
        # Read on until fetches sent after the commits were read come back empty: whatever a group produced
        # before committing is then behind the tail's position, so a commit cannot hide its own outputs.
        self.update(quiet_s=QUIET_S)
        ends = {tp: self._consumer.position(tp) for tp in self._partitions}
        steady, self._last_ends = ends == self._last_ends, ends
        if not steady:
            return False
        for group, topics in self.groups.items():
            offsets = committed.get(group, {})
            for tp in self._partitions:
                if tp.topic[len(self.settings.topic_prefix) :] in topics:
                    done = offsets.get(tp)
                    if (done.offset if done is not None else 0) < ends[tp]:
                        return False
        written = self.written()
        return written is not None and all(n == len(self.records[t]) for t, n in written.items())

    def wait(self, timeout_s: float, on_progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        """Block until the flow has settled; returns the records in the table by topic. Raises `TimeoutError`
        naming the counts."""
        deadline = time.monotonic() + timeout_s
        while not self.settled():
            if on_progress is not None:
                on_progress(self.counts())
            if time.monotonic() > deadline:
                raise TimeoutError(f"the flow did not settle within {timeout_s:.0f}s; records so far: {self.counts()}")
        written = self.written()
        assert written is not None
        return written

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()
