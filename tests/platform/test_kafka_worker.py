"""Stage workers in Kafka consumer groups on the real broker: results, commits, retries and dead letters."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from platform_testing import bus_settings, committed, read_topics
from prometheus_client import REGISTRY

from lema.bus.base import Message, Topics
from lema.bus.kafka import KafkaBus, RawMessage, ensure_topics, kafka_bus
from lema.config import BusSettings, LemaSettings, LLMSettings
from lema.llm.base import Completion, GenerationRequest, TokenUsage
from lema.pipeline import Resources, Worker, batches_in_flight, build_worker
from lema.records import Attempt, Question, ReasoningPath, Record
from lema.runtime.failures import Dependencies
from lema.runtime.infra import LocalBroker, free_port
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
def bus(broker: LocalBroker, bus_client: str) -> Iterator[tuple[BusSettings, KafkaBus]]:
    settings = bus_settings(broker, client=bus_client)
    ensure_topics(settings, Topics.ALL, partitions=2, replication_factor=1)
    producer = kafka_bus(settings, client_id="test-producer")
    yield settings, producer
    producer.close()


def run_until(worker: KafkaWorker, consumed: int, timeout_s: float = 60) -> None:
    """Step until `consumed` messages came in, then finish (acknowledge and commit) the batches in hand."""
    total, deadline = 0, time.monotonic() + timeout_s
    while total < consumed:
        assert time.monotonic() < deadline, f"consumed {total} of {consumed} messages"
        total += worker.step(0.5)
    worker.finish()


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
    assert sum(committed(settings, "checker").values()) == 22


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


class SlowStage:
    """A stage worker whose every batch takes `pause_s` longer than the worker it wraps."""

    def __init__(self, inner: Worker, pause_s: float) -> None:
        self.name, self.inputs = inner.name, inner.inputs
        self._inner, self._pause_s = inner, pause_s

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        time.sleep(self._pause_s)
        return self._inner.process(topic, records)


@pytest.mark.parametrize("in_flight", [1, 2], ids=["on-the-polling-thread", "on-processing-threads"])
def test_a_batch_longer_than_the_poll_interval_keeps_its_partitions(
    broker: LocalBroker, bus_client: str, in_flight: int
) -> None:
    """A batch outlasts `max_poll_interval_ms`, processed on the polling thread or beside it: the member stays in
    the group, commits, sees nothing twice."""
    # librdkafka takes no poll interval below the session timeout, so its session is short too (its heartbeats run
    # in C threads); kafka-python's heartbeat thread needs the default's slack on a loaded machine.
    session_ms = {"librdkafka": 1000, "kafka-python": 6000}[bus_client]
    short = {"max_poll_interval_ms": 1000, "session_timeout_ms": session_ms, "batch_size": 100}
    settings = bus_settings(broker, client=bus_client).model_copy(update=short)
    ensure_topics(settings, Topics.ALL, partitions=1, replication_factor=1)
    attempts = [attempt(i, 12 + i % 2) for i in range(40)]
    producer = kafka_bus(settings, client_id="test-slow-feed")
    producer.publish([Message(Topics.PATHS, a.key, a) for a in attempts])
    producer.close()
    resources = Resources(LemaSettings())
    stage = SlowStage(build_worker("checker", LemaSettings(), resources), pause_s=2.5)  # 2.5x the poll interval
    worker = KafkaWorker(stage, settings, client_id="test-slow", batches_in_flight=in_flight)
    try:
        run_until(worker, len(attempts))
    finally:
        worker.close()
        resources.close()
    assert committed(settings, "checker") == {(Topics.PATHS, 0): len(attempts)}, "the commit was refused"
    results = read_topics(settings, [Topics.COT, Topics.MISTAKES], expected=len(attempts) + 1, timeout_s=5)
    assert sorted(d.key.decode() for d in results if d.key) == sorted(a.key for a in attempts)  # each exactly once


def test_consumer_lag_is_exported(broker: LocalBroker, bus_client: str) -> None:
    settings = bus_settings(broker, client=bus_client).model_copy(update={"batch_size": 8})
    ensure_topics(settings, Topics.ALL, partitions=1, replication_factor=1)
    producer = kafka_bus(settings, client_id="test-lag-feed")
    producer.publish([Message(Topics.PATHS, a.key, a) for a in (attempt(i, 12) for i in range(30))])
    producer.close()
    resources = Resources(LemaSettings())
    worker = KafkaWorker(build_worker("checker", LemaSettings(), resources), settings, client_id="test-lag")
    try:
        consumed, deadline = 0, time.monotonic() + 60
        while consumed == 0:
            assert time.monotonic() < deadline, "the worker consumed nothing in 60 s"
            consumed = worker.step(0.5)
    finally:
        worker.close()
        resources.close()
    group = f"{settings.group_prefix}checker"
    lag = REGISTRY.get_sample_value("lema_kafka_consumer_lag_messages", {"group": group, "topic": Topics.PATHS})
    assert lag == 30 - consumed


def test_an_oversized_message_is_dead_lettered_within_the_size_limit_and_the_worker_carries_on(
    bus: tuple[BusSettings, KafkaBus],
) -> None:
    settings, producer = bus
    small = settings.model_copy(update={"max_message_bytes": 8192})
    producer.publish_raw([RawMessage(Topics.PATHS, b"huge", b"\x00" * 100_000, [("origin", b"test")])])
    producer.publish([Message(Topics.PATHS, a.key, a) for a in (attempt(i, 12) for i in range(3))])
    resources = Resources(LemaSettings())
    worker = KafkaWorker(build_worker("checker", LemaSettings(), resources), small, client_id="test-oversized")
    try:
        run_until(worker, 4)
    finally:
        worker.close()
        resources.close()
    (letter,) = read_topics(settings, [Topics.DLQ], expected=1)
    headers = dict(letter.headers)
    assert letter.key == b"huge" and letter.value is None
    assert b"oversized message" in headers["lema-error"] and headers["lema-source-size"] == b"100014"
    assert headers["lema-payload-dropped"] and headers["lema-source-topic"] == f"{settings.topic_prefix}paths".encode()
    assert len(read_topics(settings, [Topics.COT], expected=3)) == 3
    assert sum(committed(settings, "checker").values()) == 4


def test_an_llm_outage_is_waited_out_without_dead_letters(bus: tuple[BusSettings, KafkaBus], tmp_path: Path) -> None:
    """The corrector's LLM server is down when the mistakes arrive and starts 2 s after the worker reported it down:
    the batch waits, health listeners hear 'down' then 'up', nothing goes to the DLQ."""
    settings, producer = bus
    port = free_port()
    llm = LLMSettings(
        backend="openai", model="stub", base_url=f"http://127.0.0.1:{port}/v1", retry_window_s=0.3, retry_backoff_s=0.05
    )
    lema_settings = LemaSettings(llms={"smollm2": llm})
    wrong = [attempt(i, 13) for i in range(2)]
    producer.publish([Message(Topics.MISTAKES, a.key, a) for a in wrong])
    resources = Resources(lema_settings)
    changes: list[bool] = []
    dependencies = Dependencies("test-corrector")
    dependencies.on_change(changes.append)
    worker = KafkaWorker(
        build_worker("corrector", lema_settings, resources),
        settings,
        client_id="test-llm-outage",
        dependencies=dependencies,
    )
    server: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    consuming = threading.Thread(target=worker.run, args=(stop,))
    consuming.start()
    try:
        deadline = time.monotonic() + 90
        while not changes:
            assert time.monotonic() < deadline, "the worker never reported the LLM down"
            time.sleep(0.1)
        time.sleep(2.0)  # down for a while: several LLMUnavailable in a row, none dead-lettered
        assert read_topics(settings, [Topics.CORRECTIONS, Topics.DROPS], expected=1, timeout_s=1) == []
        questions = Path(__file__).parents[2] / "examples" / "data" / "demo_problems.jsonl"
        command = [sys.executable, str(Path(__file__).parent / "stub_llm.py"), str(port), str(questions), "0"]
        server = subprocess.Popen(command)
        outputs = read_topics(settings, [Topics.CORRECTIONS, Topics.DROPS], expected=2, timeout_s=90)
    finally:
        stop.set()
        consuming.join(timeout=60)
        resources.close()
        if server is not None:
            server.kill()
            server.wait()
    assert len(outputs) >= 2
    assert changes == [False, True]
    assert REGISTRY.get_sample_value("lema_dependency_up", {"dependency": "llm"}) == 1.0
    assert read_topics(settings, [Topics.DLQ], expected=1, timeout_s=3) == []


class ConcurrencyRecorder:
    """An LLM that answers after a pause, recording the most requests it ever had in flight at once."""

    model = "recorder"

    def __init__(self, pause_s: float) -> None:
        self.usage = TokenUsage()
        self.pause_s = pause_s
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        with self._lock:
            self.in_flight += len(requests)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.pause_s)
        with self._lock:
            self.in_flight -= len(requests)
        return [[Completion("Step 1: 5 + 7 = 12.\nThe answer is 12", 10, 10)] * r.n for r in requests]

    def close(self) -> None:
        pass


def test_the_sampler_keeps_max_concurrency_requests_in_flight_across_batch_boundaries(broker: LocalBroker) -> None:
    """2 questions x 2 samples = 4 requests per batch: only batches in flight side by side fill 6 slots. The window
    is the worker's, not the client's: the default client carries it."""
    settings = bus_settings(broker).model_copy(update={"batch_size": 2})
    ensure_topics(settings, Topics.ALL, partitions=1, replication_factor=1)
    questions = [Question.create(f"What is {i} plus {i}?", str(2 * i), "gsm8k", "t:1") for i in range(16)]
    producer = kafka_bus(settings, client_id="test-window-feed")
    producer.publish([Message(Topics.QUESTIONS, q.key, q) for q in questions])
    producer.close()
    lema_settings = LemaSettings.model_validate(
        {
            "llms": {"smollm2": {"max_concurrency": 6}},
            "sample": {"models": ["smollm2"], "samples_per_model": 2},
        }
    )
    llm = ConcurrencyRecorder(pause_s=0.3)
    resources = Resources(lema_settings, backend_factory=lambda _name, _settings: llm)
    depth = batches_in_flight("sampler", lema_settings, settings.batch_size)
    worker = KafkaWorker(
        build_worker("sampler", lema_settings, resources), settings, client_id="test-window", batches_in_flight=depth
    )
    try:
        run_until(worker, len(questions))
        while sum(committed(settings, "sampler").values()) < len(questions):
            worker.step(0.5)
    finally:
        worker.close()
        resources.close()
    assert depth == 4  # the head batch, then 2 x 6 requests behind it
    assert llm.max_in_flight >= 6, f"at most {llm.max_in_flight} requests in flight: a barrier between batches"
    paths = read_topics(settings, [Topics.PATHS], expected=2 * len(questions))
    assert len({d.key for d in paths}) == len(paths) == 2 * len(questions)  # each path once
