"""Stage workers in Kafka consumer groups on the real broker: results, commits, retries and dead letters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_testing import bus_settings, read_topics

from lema.bus.base import Message, Topics
from lema.bus.kafka import KafkaBus, KafkaInbox, RawMessage, ensure_topics
from lema.config import BusSettings, LemaSettings, LLMSettings
from lema.pipeline import Resources, build_worker
from lema.records import Attempt, Question, ReasoningPath
from lema.runtime.infra import LocalBroker
from lema.runtime.kafka_worker import KafkaWorker
from lema.runtime.wire import decode

QUESTION = Question.create("Ann has 5 pens and buys 7 more. How many pens does she have?", "12", "gsm8k", "t.jsonl:1")


def attempt(index: int, answer: int) -> Attempt:
    path = ReasoningPath(
        id=f"p-{index:04d}",
        question_id=QUESTION.id,
        model="smollm2-135m",
        sample_index=index,
        prompt_version="sample-gsm8k@test",
        text=f"Step 1: 5 + 7 = {answer}.\nThe answer is {answer}",
    )
    return Attempt(question=QUESTION, path=path)


@pytest.fixture
def bus(broker: LocalBroker) -> Iterator[tuple[BusSettings, KafkaBus]]:
    settings = bus_settings(broker)
    ensure_topics(settings, Topics.ALL, partitions=2, replication_factor=1)
    producer = KafkaBus(settings, client_id="test-producer")
    yield settings, producer
    producer.close()


def run_until(worker: KafkaWorker, consumed: int, timeout_s: float = 60) -> None:
    total, deadline = 0, time.monotonic() + timeout_s
    while total < consumed:
        assert time.monotonic() < deadline, f"consumed {total} of {consumed} messages"
        total += worker.step(0.5)


def test_checker_worker_routes_results_commits_and_dead_letters_malformed_messages(
    bus: tuple[BusSettings, KafkaBus],
) -> None:
    settings, producer = bus
    attempts = [attempt(i, 12 if i % 2 else 13) for i in range(20)]
    producer.publish([Message(Topics.PATHS, a.key, a) for a in attempts[:10]])
    producer.publish_raw([RawMessage(Topics.PATHS, b"garbage", b"\xff\xff not an envelope", [])])
    producer.publish([Message(Topics.PATHS, QUESTION.key, QUESTION)])  # a valid record of the wrong type
    producer.publish([Message(Topics.PATHS, a.key, a) for a in attempts[10:]])

    resources = Resources(LemaSettings())
    worker = KafkaWorker(build_worker("checker", LemaSettings(), resources), settings, client_id="test-checker")
    try:
        run_until(worker, 22)
    finally:
        worker.close()
        resources.close()

    results = read_topics(settings, [Topics.COT, Topics.MISTAKES], expected=20)
    routed = {d.key.decode(): d.topic for d in results if d.key}
    assert routed == {a.key: Topics.COT if a.path.text.endswith("12") else Topics.MISTAKES for a in attempts}
    checked = [decode(d.value) for d in results]
    assert all(isinstance(r, Attempt) and r.path.verdict in ("correct", "wrong") for r in checked)

    letters = {d.key: d for d in read_topics(settings, [Topics.DLQ], expected=2)}
    assert letters[b"garbage"].value == b"\xff\xff not an envelope"
    garbage = dict(letters[b"garbage"].headers)
    assert garbage["lema-error"].startswith(b"malformed message: not a lema.v1.Envelope")
    assert garbage["lema-source-topic"] == f"{settings.topic_prefix}paths".encode()
    assert garbage["lema-source-offset"].isdigit() and garbage["lema-source-partition"] in (b"0", b"1")
    assert garbage["lema-attempts"] == b"1"
    assert garbage["lema-consumer-group"] == f"{settings.group_prefix}checker".encode()
    wrong_type = dict(letters[QUESTION.key.encode()].headers)
    assert wrong_type["lema-error"] == b"malformed message: expected a Attempt on topic 'paths', got a Question"

    # All 22 offsets are committed: the group's next member starts after them.
    after = KafkaInbox(settings, f"{settings.group_prefix}checker", [Topics.PATHS], client_id="test-after")
    try:
        assert after.poll(3.0) == []
    finally:
        after.close()


def test_a_failing_message_is_retried_then_dead_lettered_and_the_worker_carries_on(
    bus: tuple[BusSettings, KafkaBus], tmp_path: Path
) -> None:
    """The corrector's LLM (replaying an empty recording) fails on every request: bounded tries, then the DLQ."""
    settings, producer = bus
    recording = tmp_path / "empty.jsonl"
    recording.write_text("")
    lema_settings = LemaSettings(llms={"smollm2": LLMSettings(backend="replay", recording=recording)})
    wrong = [attempt(i, 13) for i in range(2)]
    producer.publish([Message(Topics.MISTAKES, a.key, a) for a in wrong])
    resources = Resources(lema_settings)
    worker = KafkaWorker(
        build_worker("corrector", lema_settings, resources), settings, client_id="test-corrector", retry_backoff_s=0.01
    )
    try:
        run_until(worker, 2)
        producer.publish([Message(Topics.MISTAKES, wrong[0].key, wrong[0])])
        run_until(worker, 1)  # still consuming after the dead letters
    finally:
        worker.close()
        resources.close()
    letters = read_topics(settings, [Topics.DLQ], expected=3)
    assert len(letters) == 3
    for headers in (dict(letter.headers) for letter in letters):
        assert headers["lema-attempts"] == str(settings.max_attempts).encode()
        assert b"LLMError" in headers["lema-error"] and b"no recorded completion" in headers["lema-error"]
