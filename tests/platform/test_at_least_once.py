"""SIGKILL workers mid-batch, again and again, then restart: the final dataset has no lost and no duplicated record."""

from __future__ import annotations

import time
from pathlib import Path

from platform_testing import ServiceChild, bus_settings, s3_env, store_settings, write_config

from lema.bus.base import Message, Topics
from lema.bus.kafka import ensure_topics, kafka_bus
from lema.config import StoreSettings
from lema.dataset.reader import read_examples
from lema.records import Attempt, CorrectedAttempt, Correction, Question, ReasoningPath
from lema.runtime.infra import LocalBroker, LocalS3
from lema.runtime.progress import FlowTracker

QUESTIONS = 40
PATHS_PER_QUESTION = 20


def flow() -> tuple[list[Question], list[Attempt], list[CorrectedAttempt]]:
    questions = [
        Question.create(f"A farm has {i} cows and buys {i} more. How many cows?", str(2 * i), "gsm8k", f"f:{i}")
        for i in range(1, QUESTIONS + 1)
    ]
    attempts = [
        Attempt(
            question=q,
            path=ReasoningPath(
                id=f"p-{q.id}-{k}",
                question_id=q.id,
                model="smollm2-135m",
                sample_index=k,
                prompt_version="sample-gsm8k@test",
                text=f"Step 1: add.\nThe answer is {int(q.gold) + k % 3}",
            ),
        )
        for q in questions
        for k in range(PATHS_PER_QUESTION)
    ]
    corrections = [
        CorrectedAttempt(
            question=a.question,
            path=a.path.model_copy(update={"verdict": "wrong"}),
            correction=Correction(
                id=f"c-{a.path.id}",
                path_id=a.path.id,
                question_id=a.question.id,
                incorrect_step=1,
                explanation="Added wrong.",
                # Passes the verify gates (restarts at the named step, arithmetic right); odd samples miss the gold.
                corrected_solution=(
                    f"Step 1: {int(a.question.gold)} + {a.path.sample_index % 2} = "
                    f"{int(a.question.gold) + a.path.sample_index % 2}.\n"
                    f"The answer is {int(a.question.gold) + a.path.sample_index % 2}"
                ),
                answer=None,
                corrector_model="smollm2-135m",
                prompt_version="correct-gsm8k@test",
            ),
        )
        for a in attempts
        if a.path.sample_index % 3 and a.path.sample_index < 8
    ]
    return questions, attempts, corrections


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    broker: LocalBroker, bus_client: str, s3_credentials: LocalS3, tmp_path: Path, logs: Path
) -> None:
    s3 = s3_credentials
    bus = bus_settings(broker, client=bus_client)
    settings = {
        "run": {"name": "killed"},
        "bus": bus.model_dump(),
        "store": store_settings(s3, "at-least-once"),
        "checker": {"workers": 1},
    }
    config = write_config(tmp_path / "config.yaml", settings)
    ensure_topics(bus, Topics.ALL, partitions=4, replication_factor=1)
    questions, attempts, corrections = flow()
    producer = kafka_bus(bus, client_id="test-feed")
    producer.publish([Message(Topics.QUESTIONS, q.key, q) for q in questions])

    services = {
        name: ServiceChild(name, config, logs / f"{name}.log", s3_env(s3)).start()
        for name in ("checker", "dataset-writer")
    }
    chunks = [attempts[i : i + 100] for i in range(0, len(attempts), 100)]
    kills = ["checker", "dataset-writer", "checker"]
    for index, chunk in enumerate(chunks):
        producer.publish([Message(Topics.PATHS, a.key, a) for a in chunk])
        if index == 2:
            producer.publish([Message(Topics.CORRECTIONS, c.key, c) for c in corrections])
        if index < len(kills):
            # Kill the victim as soon as it is seen working on this chunk: mid-stream, between polls and commits.
            victim = services[kills[index]]
            victim.wait_serving()
            busy_since, deadline = victim.metric("lema_stage_records_in"), time.monotonic() + 30
            # Under load it may have finished the chunk already: then it is killed between batches.
            while victim.metric("lema_stage_records_in") == busy_since and time.monotonic() < deadline:
                time.sleep(0.05)
            assert victim.kill() == -9
            services[victim.service] = ServiceChild(victim.service, config, victim.log, victim.env).start()
    producer.close()
    for service in services.values():
        service.wait_serving()

    store = StoreSettings.model_validate(settings["store"])
    tracker = FlowTracker(bus, store, "killed", services=("checker", "dataset-writer"))
    try:
        report = tracker.wait(timeout_s=240)
    finally:
        tracker.close()
    for service in services.values():
        assert service.stop() == 0, service.tail()

    right = {a.path.id for a in attempts if a.path.text.endswith(f" {a.question.gold}")}
    examples = read_examples(store, "killed")
    cot_ids = [e.id for e in examples.cot]
    assert len(cot_ids) == len(set(cot_ids)), "a record appears twice"
    assert set(cot_ids) == right, f"lost {len(right - set(cot_ids))} records"
    verified = {c.correction.id for c in corrections if c.correction.corrected_solution.endswith(f" {c.question.gold}")}
    correction_ids = [e.id for e in examples.corrections]
    assert len(correction_ids) == len(set(correction_ids)) and set(correction_ids) == verified, report
    assert report.in_dataset is not None and report.differences == {}
    assert report.in_dataset["mistakes"] == len(attempts) - len(right)
    assert report.in_dataset["drops"] == len(corrections) - len(verified)
    assert report.dead_lettered == {} and report.in_flight == {}
    assert "positioned by the sink" in services["dataset-writer"].tail(100_000)
