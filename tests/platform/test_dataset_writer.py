"""The durable dataset writer on the S3 server: each record once, restart without loss, embedded-identical files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from lema.bus.base import Topics
from lema.config import DatasetSettings, LemaSettings, StoreSettings
from lema.pipeline import DatasetWriterWorker, Resources
from lema.records import Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath, Record, Verdict
from lema.runtime.dataset_writer import DurableDatasetWriter
from lema.runtime.infra import LocalS3
from lema.stages.dataset import DatasetBuilder
from lema.store import LocalStore, create_store
from lema.store.base import ArtifactStore

_buckets = itertools.count()


def records() -> dict[str, list[Record]]:
    questions = [
        Question.create(
            f"Question {i}: what is {i} + {i}?",
            str(2 * i),
            "gsm8k",
            f"in.jsonl:{i}",
            reference_solution=f"{i} + {i} = {2 * i}. The answer is {2 * i}",
        )
        for i in range(1, 4)
    ]

    def path(question: Question, index: int, answer: int, verdict: Verdict) -> ReasoningPath:
        return ReasoningPath(
            id=f"p-{question.id}-{index}",
            question_id=question.id,
            model="smollm2-135m",
            sample_index=index,
            prompt_version="sample-gsm8k@test",
            text=f"The answer is {answer}",
            answer=str(answer),
            verdict=verdict,
        )

    right = [Attempt(question=q, path=path(q, 0, int(q.gold), "correct")) for q in questions]
    wrong = [Attempt(question=q, path=path(q, 1, int(q.gold) + 1, "wrong")) for q in questions]
    verified = [
        CorrectedAttempt(
            question=a.question,
            path=a.path,
            correction=Correction(
                id=f"c-{a.path.id}",
                path_id=a.path.id,
                question_id=a.question.id,
                incorrect_step=1,
                explanation="Off by one.",
                corrected_solution=f"The answer is {a.question.gold}",
                answer=a.question.gold,
                verified=True,
                corrector_model="smollm2-135m",
                prompt_version="correct-gsm8k@test",
            ),
        )
        for a in wrong[:2]
    ]
    drops = [Drop(stage="verify", reason="wrong_answer", record_id=f"c-{wrong[2].path.id}")]
    return {
        Topics.QUESTIONS: list(questions),
        Topics.COT: list(right),
        Topics.MISTAKES: list(wrong),
        Topics.VERIFIED: list(verified),
        Topics.DROPS: list(drops),
    }


@pytest.fixture
def store(s3_credentials: LocalS3) -> ArtifactStore:
    return create_store(StoreSettings(kind="minio", endpoint=s3_credentials.endpoint, bucket=f"ds-{next(_buckets)}"))


def writer(store: ArtifactStore) -> DurableDatasetWriter:
    worker = DatasetWriterWorker(LemaSettings(), Resources(LemaSettings()))
    return DurableDatasetWriter(worker, store, "run")


def embedded_files(tmp_path: Path) -> dict[str, bytes]:
    """What the embedded runtime's sink writes for the same records, each delivered once."""
    builder = DatasetBuilder(DatasetSettings())
    for topic, batch in records().items():
        for record in batch:
            builder.add(topic, record)
    local = LocalStore(tmp_path / "embedded")
    builder.write(local, "run")
    return {name: local.get_bytes(f"run/{name}") for name in ("cot.jsonl", "corrections.jsonl", "run_summary.json")}


def test_each_record_once_even_when_delivered_twice(store: ArtifactStore, tmp_path: Path) -> None:
    sink = writer(store)
    for _ in range(2):  # the whole flow redelivered, as after a crash before the commit
        for topic, batch in records().items():
            assert sink.process(topic, batch) == []
    sink.flush()
    expected = embedded_files(tmp_path)
    for name, data in expected.items():
        assert store.get_bytes(f"run/{name}") == data, name
    manifest = json.loads(store.get_bytes("run/manifest.json"))
    assert manifest["records"] == {"questions": 3, "cot": 3, "mistakes": 3, "corrections.verified": 2, "drops": 1}
    assert manifest["shards"] == 10
    assert "run/cot.jsonl" in manifest["files"]
    cot_ids = [json.loads(line)["id"] for line in store.get_bytes("run/cot.jsonl").splitlines()]
    assert len(cot_ids) == len(set(cot_ids)) == 6  # 3 sampled + 3 gold solutions


def test_a_restarted_writer_restores_every_shard(store: ArtifactStore, tmp_path: Path) -> None:
    first = writer(store)
    batches = list(records().items())
    for topic, batch in batches[:3]:
        first.process(topic, batch)
    # killed here: no flush. A new writer picks up the shards, then the rest arrives.
    second = writer(store)
    assert second.shards == 3
    for topic, batch in batches[3:]:
        second.process(topic, batch)
    second.flush()
    for name, data in embedded_files(tmp_path).items():
        assert store.get_bytes(f"run/{name}") == data, name


def test_flush_writes_only_when_something_arrived(store: ArtifactStore) -> None:
    sink = writer(store)
    sink.flush()
    assert not store.exists("run/manifest.json")
    sink.process(Topics.DROPS, records()[Topics.DROPS])
    sink.flush()
    assert store.exists("run/manifest.json")


def test_an_unreadable_shard_is_named_with_its_line(store: ArtifactStore) -> None:
    store.put_bytes("run/shards/drops-bad.jsonl", b'{"topic": "drops", "record": {"stage": "x"}}\n')
    with pytest.raises(ValueError, match=r"run/shards/drops-bad\.jsonl:1: unreadable shard line"):
        writer(store)
