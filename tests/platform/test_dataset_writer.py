"""The Kafka dataset writer on the broker and the S3 server: offsets in the table, replicas, kill -9, export."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_testing import ServiceChild, bus_settings, s3_env, store_settings, write_config

from lema.bus.base import Message, Topics
from lema.bus.kafka import ensure_topics, kafka_bus
from lema.config import BusSettings, LemaSettings
from lema.dataset import create_sink
from lema.dataset.base import DatasetSink
from lema.dataset.reader import read_examples, read_records
from lema.pipeline import DatasetWriterWorker, Resources
from lema.records import Attempt, Drop, Question, ReasoningPath
from lema.runtime.dataset_writer import TableOffsets, source_id
from lema.runtime.infra import LocalBroker, LocalS3
from lema.runtime.kafka_worker import KafkaWorker

PARTITIONS = 4
_buckets = itertools.count()


def attempts(start: int, count: int) -> list[Attempt]:
    question = Question.create("What is 2 + 2?", "4", "gsm8k", "t:1")
    return [
        Attempt(
            question=question,
            path=ReasoningPath(
                id=f"p-{i:07d}",
                question_id=question.id,
                model="m",
                sample_index=i,
                prompt_version="sample-gsm8k@test",
                text="Step 1: 2 + 2 = 4.\nThe answer is 4",
                answer="4",
                verdict="correct",
            ),
        )
        for i in range(start, start + count)
    ]


def drops(start: int, count: int) -> list[Drop]:
    return [Drop(stage="correct", reason="unparsable", record_id=f"c-{i:07d}") for i in range(start, start + count)]


def publish(bus: BusSettings, cot: list[Attempt], dropped: list[Drop]) -> None:
    producer = kafka_bus(bus, client_id="test-feed")
    try:
        producer.publish(
            [Message(Topics.COT, a.key, a) for a in cot] + [Message(Topics.DROPS, d.key, d) for d in dropped]
        )
    finally:
        producer.close()


def sources(bus: BusSettings) -> list[str]:
    group = bus.group_prefix + DatasetWriterWorker.name
    return [source_id(group, topic, p) for topic in (Topics.COT, Topics.DROPS) for p in range(PARTITIONS)]


def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.5)


def settings_for(bus: BusSettings, s3: LocalS3, run: str) -> LemaSettings:
    bucket = f"writer-{next(_buckets)}"
    return LemaSettings.model_validate(
        {"run": {"name": run}, "bus": bus.model_dump(), "store": store_settings(s3, bucket)}
    )


@pytest.fixture
def s3_bus(broker: LocalBroker, s3_credentials: LocalS3, bus_client: str) -> Iterator[tuple[BusSettings, LocalS3]]:
    bus = bus_settings(broker, client=bus_client)
    ensure_topics(bus, Topics.ALL, partitions=PARTITIONS, replication_factor=1)
    yield bus, s3_credentials


class Replica:
    """A dataset writer in a thread of this process, wired as `lema serve dataset-writer` wires it."""

    def __init__(self, settings: LemaSettings, name: str) -> None:
        self.worker = DatasetWriterWorker(settings, Resources(settings))
        table = TableOffsets(self.worker, settings.bus.group_prefix + self.worker.name)
        bus = settings.bus.model_copy(update={"batch_size": 500})
        self.kafka = KafkaWorker(self.worker, bus, client_id=name, on_batch=table.commit, on_assign=table.positions)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.kafka.run, args=(self.stop,), name=name)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def holds(sink: DatasetSink, bus: BusSettings, messages: int) -> Callable[[], bool]:
    """The table's offsets account for `messages` messages (the topics are new: every partition starts at 0)."""
    return lambda: sum(sink.offsets(sources(bus)).values()) == messages


def test_replicas_append_each_message_once_across_restarts(s3_bus: tuple[BusSettings, LocalS3]) -> None:
    bus, s3 = s3_bus
    settings = settings_for(bus, s3, "replicas")
    sink = create_sink(settings)
    publish(bus, attempts(0, 600), drops(0, 400))
    first = Replica(settings, "writer-a")
    try:
        wait_until(holds(sink, bus, 1000), 120, "the first writer to take in every message")
    finally:
        first.close()
    # More work, some of it redelivered upstream (same ids, new offsets), for two replicas started afresh: they
    # start from the table's offsets, so nothing the first writer appended is appended again.
    publish(bus, attempts(500, 600), drops(300, 400))
    replicas = [Replica(settings, "writer-b"), Replica(settings, "writer-c")]
    try:
        wait_until(holds(sink, bus, 2000), 180, "two writers to take in every message")
    finally:
        for replica in replicas:
            replica.close()
    assert sink.read("paths", ["id"]).num_rows == 600 + 600  # one row per message: no batch appended twice
    assert sink.read("drops", ["id"]).num_rows == 400 + 400
    cot = read_examples(settings.store, "replicas").cot
    assert [e.id for e in cot] == [f"p-{i:07d}" for i in range(1100)]  # upstream redeliveries read once
    assert len(read_records(sink, "drops")) == 700


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill_9_of_a_replica_mid_run_loses_and_doubles_nothing(
    s3_bus: tuple[BusSettings, LocalS3], tmp_path: Path, logs: Path
) -> None:
    bus, s3 = s3_bus
    # Heartbeats get slack on a busy machine: an expired session is a rebalance, which this test must not need.
    bus = bus.model_copy(update={"session_timeout_ms": 30_000, "max_poll_interval_ms": 60_000})
    settings = settings_for(bus, s3, "killed-writer")
    config = write_config(tmp_path / "config.yaml", settings.model_dump(mode="json"))
    total = int(os.environ.get("LEMA_TEST_KILL_RECORDS", "20000"))  # the 200,000: set it (4 minutes here)
    chunk = max(2, total // 20)
    cot, dropped = attempts(0, total // 2), drops(0, total // 2)
    env = s3_env(s3)
    replicas = [ServiceChild("dataset-writer", config, logs / f"writer-{i}.log", env).start() for i in range(2)]
    sink = create_sink(settings)

    def consumed() -> int:
        return sum(sink.offsets(sources(bus)).values())

    killed_at = None
    try:
        for start in range(0, total // 2, chunk // 2):
            publish(bus, cot[start : start + chunk // 2], dropped[start : start + chunk // 2])
            if killed_at is None and consumed() >= total // 4:
                killed_at = consumed()
                assert replicas[0].kill() == -9
                replicas[0] = ServiceChild("dataset-writer", config, logs / "writer-0b.log", env).start()
        if killed_at is None:  # published faster than written: kill once a quarter is in
            wait_until(lambda: consumed() >= total // 4, 600, "a quarter of the run")
            killed_at = consumed()
            assert replicas[0].kill() == -9
            replicas[0] = ServiceChild("dataset-writer", config, logs / "writer-0b.log", env).start()
        assert killed_at < total, "the writers finished before the kill"
        wait_until(holds(sink, bus, total), 900, "the writers to take in the whole run")
    finally:
        for replica in replicas:
            replica.stop()
    examples = read_examples(settings.store, "killed-writer")
    assert [e.id for e in examples.cot] == [a.path.id for a in cot]  # each record once: none lost, none twice
    assert {d.record_id for d in read_records(sink, "drops") if isinstance(d, Drop)} == {d.record_id for d in dropped}
    duplicates = sink.read("paths", ["id"]).num_rows - len(cot)
    assert duplicates < 2 * settings.dataset.writer_batch_size  # a batch around the rebalance, removed on read
