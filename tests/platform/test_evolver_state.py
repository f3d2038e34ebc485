"""The evolver's state on the real broker: it survives a restart and is shared by every replica.

A rule-driven LLM stands in for the generator and the voters (outputs chosen by the test, calls counted); the
broker, the consumer groups and the state topic are the real ones.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from platform_testing import bus_settings, committed, read_topics

from lema.bus.base import Message, Topics
from lema.bus.kafka import KafkaBus, ensure_topics, kafka_bus
from lema.config import BusSettings, LemaSettings, LLMSettings
from lema.evolver_state.base import Evolution
from lema.evolver_state.kafka import KafkaEvolverState
from lema.llm.base import Completion, GenerationRequest, TokenUsage
from lema.pipeline import Resources, build_worker
from lema.records import CorrectedAttempt, Correction, Question, ReasoningPath
from lema.runtime.infra import LocalBroker
from lema.runtime.kafka_worker import KafkaWorker
from lema.runtime.wire import decode

SEEDS = 12
CORRECTIONS_PER_SEED = 3


class CountingLLM:
    """Writes one new question per seed (its text names the seed) and always votes for 42; counts generations."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls

    @property
    def model(self) -> str:
        return "rule-llm"

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for request in requests:
            prompt = request.messages[-1].content
            marker = next((w for w in prompt.split() if w.startswith("seedmark")), "")
            if not prompt.startswith("Original problem:"):
                text = "Step 1: count.\nThe answer is 42."
            else:
                self.calls[marker] += 1
                w = "".join(chr(ord("a") + int(d)) for d in marker.removeprefix("seedmark"))  # numbers are masked
                text = f"New problem: Ranch {w} keeps {w}sheep in {w}pens by {w}lake for {w}days. How many pens?"
            out.append([Completion(text, 1, 1)])
        return out

    def close(self) -> None:
        pass


def seed_flow() -> tuple[list[Question], list[CorrectedAttempt]]:
    seeds = [
        Question.create(f"Farm seedmark{i} has {i} goats and buys {i} more. How many?", str(2 * i), "gsm8k", f"f:{i}")
        for i in range(SEEDS)
    ]
    corrections = []
    for seed in seeds:
        for k in range(CORRECTIONS_PER_SEED):
            path = ReasoningPath(
                id=f"p-{seed.id}-{k}",
                question_id=seed.id,
                model="m",
                sample_index=k,
                prompt_version="t",
                text="The answer is 1",
                verdict="wrong",
            )
            correction = Correction(
                id=f"c-{seed.id}-{k}",
                path_id=path.id,
                question_id=seed.id,
                incorrect_step=1,
                explanation="Added wrong.",
                corrected_solution=f"The answer is {seed.gold}",
                answer=seed.gold,
                corrector_model="m",
                prompt_version="t",
                verified=True,
            )
            corrections.append(CorrectedAttempt(question=seed, path=path, correction=correction))
    return seeds, corrections


def settings_for(bus: BusSettings) -> LemaSettings:
    return LemaSettings(
        llms={"rule": LLMSettings(backend="replay")},
        sample={"models": ("rule",)},
        correct={"model": "rule"},
        evolve={"model": "rule", "answer_models": ("rule",), "questions_per_seed": 1, "votes": 1},
        bus=bus,
    )


@pytest.fixture
def bus(broker: LocalBroker, bus_client: str) -> Iterator[tuple[BusSettings, KafkaBus]]:
    """The state on each Kafka client: its log is built by the client `bus.client` names."""
    settings = bus_settings(broker, client=bus_client)
    ensure_topics(settings, Topics.ALL, partitions=3, replication_factor=1)
    producer = kafka_bus(settings, client_id="test-producer")
    yield settings, producer
    producer.close()


def evolver(bus: BusSettings, calls: Counter[str], name: str) -> tuple[KafkaWorker, Resources]:
    settings = settings_for(bus)
    resources = Resources(settings, lambda _name, _settings: CountingLLM(calls))
    return KafkaWorker(build_worker("evolver", settings, resources), bus, client_id=name), resources


def run_until_committed(worker: KafkaWorker, bus: BusSettings, messages: int, timeout_s: float = 90) -> None:
    """Step until the worker's group has committed `messages` messages (a rebalance may redeliver some)."""
    deadline = time.monotonic() + timeout_s
    while sum(committed(bus, "evolver").values()) < messages:
        assert time.monotonic() < deadline, f"committed {committed(bus, 'evolver')}, expected {messages} in all"
        worker.step(0.5)


def evolved_on_topic(bus: BusSettings, expected: int) -> list[Question]:
    deliveries = read_topics(bus, [Topics.QUESTIONS], expected=expected, timeout_s=20)
    return [q for d in deliveries if isinstance(q := decode(d.value), Question) and q.source == "evolved"]


def test_a_restarted_evolver_remembers_every_question_and_evolves_nothing_again(
    bus: tuple[BusSettings, KafkaBus],
) -> None:
    settings, producer = bus
    seeds, corrections = seed_flow()
    producer.publish([Message(Topics.QUESTIONS, q.key, q) for q in seeds])
    producer.publish([Message(Topics.VERIFIED, c.key, c) for c in corrections])
    calls: Counter[str] = Counter()

    # The first evolver publishes its outputs and is killed before it commits (the window a SIGKILL hits).
    first, resources = evolver(settings, calls, "evolver-1")
    handled = 0
    deadline = time.monotonic() + 90
    while handled < len(seeds) + len(corrections):
        assert time.monotonic() < deadline
        deliveries = first.inbox.poll(0.5)
        first._publish(first._handle(deliveries))  # processed, published and acknowledged
        handled += len(deliveries)
    first.close()  # leaves the group without committing anything
    resources.close()
    assert sorted(calls.values()) == [1] * SEEDS

    second, resources = evolver(settings, calls, "evolver-2")
    try:
        state = resources.evolver_state
        assert len(state.index) == 2 * SEEDS  # every seed and every evolved question, read back from the broker
        run_until_committed(second, settings, len(seeds) + len(corrections))  # nothing was committed: all again
    finally:
        second.close()
        resources.close()
    assert sorted(calls.values()) == [1] * SEEDS, "a seed was evolved again"
    evolved = evolved_on_topic(settings, len(seeds) + SEEDS)
    assert {q.parent_id for q in evolved} == {s.id for s in seeds}
    assert len({q.id for q in evolved}) == SEEDS


def test_a_replica_with_a_stale_view_loses_a_seed_claimed_before_its_claim(bus: tuple[BusSettings, KafkaBus]) -> None:
    """A claim is written without catching up first; reading back past it must still show the earlier claim."""
    settings, _ = bus
    seed = seed_flow()[0][0]
    first = KafkaEvolverState(settings, 0.85, "test-first")
    stale = KafkaEvolverState(settings, 0.85, "test-stale")  # restored before anything below was written
    try:
        assert first.claim({seed.id: "c-first"})[seed.id].claimant == "c-first"
        first.record([Evolution(seed_id=seed.id, claimant="c-first", done=True)])
        owner = stale.claim({seed.id: "c-stale"})[seed.id]
        assert (owner.claimant, owner.done) == ("c-first", True)
        assert stale.claim({seed.id: "c-again"})[seed.id] == owner  # known now: no claim written
    finally:
        first.close()
        stale.close()
    restored = KafkaEvolverState(settings, 0.85, "test-reader")
    try:  # the stale replica wrote the winner back after its own claim, so compaction keeps the winner
        assert restored.claim({seed.id: "c-late"})[seed.id] == owner
    finally:
        restored.close()


def test_reading_back_parses_only_entries_another_replica_wrote(
    bus: tuple[BusSettings, KafkaBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica's own claims, records and questions are applied as written when it reads them back; another
    replica's are parsed, and both end with the same state."""
    settings, _ = bus
    seeds = seed_flow()[0][:4]
    evolved = Question.create("A new question about pens?", "3", "gsm8k", "evolved", parent_id=seeds[0].id, round=1)
    parsed: Counter[str] = Counter()
    for model in (Question, Evolution):
        validate = model.model_validate_json

        def counting(data: str | bytes, _validate: Any = validate, _name: str = model.__name__, **kwargs: Any) -> Any:
            parsed[_name] += 1
            return _validate(data, **kwargs)

        monkeypatch.setattr(model, "model_validate_json", counting)
    writer = KafkaEvolverState(settings, 0.85, "test-writer")
    other = KafkaEvolverState(settings, 0.85, "test-other")
    try:
        writer.remember(seeds)
        writer.claim({seed.id: f"c-{seed.id}" for seed in seeds[:2]})
        writer.record([Evolution(seed_id=seeds[0].id, claimant=f"c-{seeds[0].id}", done=True, questions=(evolved,))])
        writer.claim({seeds[2].id: "c-third"})  # reads back the record and its question
        assert parsed == Counter()
        owners = other.claim({seed.id: "c-other" for seed in seeds})
        assert parsed == Counter(Question=len(seeds) + 1, Evolution=4)  # 3 claims and a record
        assert owners == writer.claim({seed.id: "c-late" for seed in seeds})
        assert owners[seeds[0].id].questions == (evolved,) and owners[seeds[3].id].claimant == "c-other"
        assert writer.index.knows(evolved.id) and other.index.knows(evolved.id)
    finally:
        writer.close()
        other.close()


def test_two_replicas_never_evolve_the_same_seed(bus: tuple[BusSettings, KafkaBus]) -> None:
    settings, producer = bus
    seeds, corrections = seed_flow()
    calls: Counter[str] = Counter()
    replicas = [evolver(settings, calls, f"replica-{i}") for i in range(2)]
    consumed = Counter[int]()
    assigned = [False, False]
    stop = threading.Event()

    def consume(index: int) -> None:
        worker = replicas[index][0]
        while not stop.is_set():
            consumed[index] += worker.step(0.3)
            assigned[index] = bool(worker.inbox.lag())  # on its own thread: a client is not shared across threads

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    try:
        # Both replicas in the group before anything arrives, so each one owns some partitions.
        while not all(assigned):
            assert time.monotonic() < deadline, "the replicas did not both join the group"
            time.sleep(0.2)
        producer.publish([Message(Topics.VERIFIED, c.key, c) for c in corrections])
        while sum(consumed.values()) < len(corrections):
            assert time.monotonic() < deadline, f"consumed {dict(consumed)} of {len(corrections)}"
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for worker, resources in replicas:
            worker.close()
            resources.close()
    assert all(consumed.values()), f"one replica got no partition: {dict(consumed)}"
    assert sorted(calls.values()) == [1] * SEEDS, f"seeds evolved more than once: {calls}"
    evolved = evolved_on_topic(settings, SEEDS)
    assert sorted(str(q.parent_id) for q in evolved) == sorted(s.id for s in seeds)
    restored = KafkaEvolverState(settings, 0.85, "test-reader")
    try:
        assert len(restored.index) == SEEDS * 2
    finally:
        restored.close()
