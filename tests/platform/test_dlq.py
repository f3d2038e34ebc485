"""`lema dlq list|show|redrive` against the real broker, on letters the checker's Kafka worker dead-lettered."""

from __future__ import annotations

from pathlib import Path

from platform_testing import bus_settings, read_topics, write_config
from typer.testing import CliRunner

from lema.bus.base import Message, Topics
from lema.bus.kafka import RawMessage, ensure_topics, kafka_bus
from lema.cli import app
from lema.config import LemaSettings
from lema.pipeline import Resources, build_worker
from lema.records import Question
from lema.runtime.infra import LocalBroker
from lema.runtime.kafka_worker import KafkaWorker
from lema.runtime.wire import decode

QUESTION = Question.create("Ann has 5 pens and buys 7 more. How many pens does she have?", "12", "gsm8k", "t.jsonl:1")


def test_list_show_and_redrive_dead_letters(broker: LocalBroker, tmp_path: Path) -> None:
    bus = bus_settings(broker)
    ensure_topics(bus, Topics.ALL, partitions=1, replication_factor=1)
    producer = kafka_bus(bus, client_id="test-producer")
    producer.publish_raw([RawMessage(Topics.PATHS, b"garbage", b"\xff not an envelope", [])])
    producer.publish([Message(Topics.PATHS, QUESTION.key, QUESTION)])  # a valid record on the wrong topic
    oversized = [
        ("lema-error", b"message too large: 5000000 bytes"),
        ("lema-source-topic", f"{bus.topic_prefix}{Topics.QUESTIONS}".encode()),
        ("lema-source-size", b"5000000"),
        ("lema-payload-dropped", b"too large for the dead-letter topic"),
    ]
    producer.publish_raw([RawMessage(Topics.DLQ, b"huge", None, oversized)])  # a letter whose payload was not kept
    resources = Resources(LemaSettings())
    worker = KafkaWorker(build_worker("checker", LemaSettings(), resources), bus, client_id="test-checker")
    try:
        consumed = 0
        for _ in range(120):
            consumed += worker.step(0.5)
            if consumed == 2:
                break
        assert consumed == 2
        worker.finish()
    finally:
        worker.close()
        resources.close()
    config = write_config(tmp_path / "config.yaml", {"bus": bus.model_dump()})
    cli = CliRunner()

    def lema(*args: str) -> tuple[int, str]:
        result = cli.invoke(app, [*args, "--config", str(config)])
        return result.exit_code, result.output

    code, listed = lema("dlq", "list")
    assert code == 0 and "3 dead letter(s): paths=2, questions=1" in listed, listed
    assert "no payload (5000000B)" in listed
    code, listed = lema("dlq", "list", "--source", "paths", "--error", "EXPECTED A")
    assert code == 0 and "1 dead letter(s): paths=1" in listed and "got a Question" in listed, listed
    position = listed.split()[0]

    code, shown = lema("dlq", "show", position)
    assert code == 0 and "record (Question)" in shown and QUESTION.text in shown, shown
    assert "lema-consumer-group: " + bus.group_prefix + "checker" in shown
    code, shown = lema("dlq", "show", "0:999")
    assert code == 1 and "no dead letter at 0:999" in shown

    code, redriven = lema("dlq", "redrive", "--source", "paths")
    assert code == 0 and "redrove 2 of 2 dead letter(s): paths=2" in redriven, redriven
    paths = read_topics(bus, [Topics.PATHS], expected=4)
    again = [d for d in paths if ("lema-redriven-from", f"dlq@{position}".encode()) in d.headers]
    assert len(again) == 1 and again[0].key == QUESTION.key.encode() and decode(again[0].value) == QUESTION
    garbage = [d for d in paths if d.key == b"garbage"]
    assert len(garbage) == 2 and garbage[1].value == garbage[0].value

    code, refused = lema("dlq", "redrive", "--source", "questions")
    assert code == 1 and "not redriven: its payload was not kept (original size: 5000000 bytes)" in refused, refused
    assert "redrove 0 of 1" in refused
