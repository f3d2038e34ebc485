"""The settled report `lema submit` prints: stray records and dead letters are counted, never waited for."""

from __future__ import annotations

import time
from pathlib import Path

from platform_testing import ServiceChild, bus_settings, s3_env, store_settings, write_config

from lema.bus.base import Message, Topics
from lema.bus.kafka import ensure_topics, kafka_bus
from lema.config import StoreSettings
from lema.records import Attempt, Question, ReasoningPath
from lema.runtime.infra import LocalBroker, LocalS3
from lema.runtime.progress import FlowTracker

QUESTIONS = [
    Question.create(f"A shop sells {i} pens a day for {i + 2} days. How many?", str(i * (i + 2)), "gsm8k", f"s:{i}")
    for i in range(1, 11)
]


def test_a_stray_record_and_a_dead_letter_are_reported_and_the_flow_settles(
    broker: LocalBroker, s3_credentials: LocalS3, tmp_path: Path, logs: Path
) -> None:
    s3 = s3_credentials
    bus = bus_settings(broker)
    settings = {"run": {"name": "report"}, "bus": bus.model_dump(), "store": store_settings(s3, "flow-report")}
    config = write_config(tmp_path / "config.yaml", settings)
    ensure_topics(bus, Topics.ALL, partitions=2, replication_factor=1)
    store = StoreSettings.model_validate(settings["store"])
    writer = ServiceChild("dataset-writer", config, logs / "writer.log", s3_env(s3)).start()
    tracker = FlowTracker(bus, store, "report", services=("dataset-writer",))
    try:
        writer.wait_serving()
        path = ReasoningPath(
            id="p-stray", question_id=QUESTIONS[0].id, model="m", sample_index=0, prompt_version="t", text="x"
        )
        producer = kafka_bus(bus, client_id="test-producer")
        producer.publish([Message(Topics.QUESTIONS, q.key, q) for q in QUESTIONS])
        # A valid record on the wrong topic: the writer dead-letters it, and it can never reach the dataset.
        producer.publish([Message(Topics.QUESTIONS, "p-stray", Attempt(question=QUESTIONS[0], path=path))])
        producer.close()
        started = time.monotonic()
        report = tracker.wait(timeout_s=120)
        waited = time.monotonic() - started
    finally:
        tracker.close()
        assert writer.stop() == 0, writer.tail()
    assert report.on_topic[Topics.QUESTIONS] == len(QUESTIONS) and report.stray == {Topics.QUESTIONS: 1}
    assert report.in_dataset is not None and report.in_dataset[Topics.QUESTIONS] == len(QUESTIONS)
    assert report.dead_lettered == {Topics.QUESTIONS: 1} and report.new_dead_letters == 1
    assert report.in_flight == {} and report.differences == {}
    assert waited < 100, f"settling took {waited:.0f}s"
    table = "\n".join(report.lines())
    assert "questions" in table and "stray" in table
