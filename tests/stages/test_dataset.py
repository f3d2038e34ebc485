from __future__ import annotations

import json
from pathlib import Path

from lema.bus.base import Topics
from lema.config import DatasetSettings
from lema.records import Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath
from lema.stages.dataset import DatasetBuilder
from lema.store.local import LocalStore

QUESTION = Question.create(
    "Tom has 3 boxes of 8 pencils and gives away 5. How many are left?",
    "19",
    "gsm8k",
    "t:1",
    reference_solution="Step 1: 3 * 8 = 24.\nStep 2: 24 - 5 = 19.\nThe answer is 19.",
)


def path(index: int, text: str, answer: str, verdict: str) -> ReasoningPath:
    return ReasoningPath(
        id=f"p-{index}",
        question_id=QUESTION.id,
        model="m",
        sample_index=index,
        prompt_version="sample-gsm8k@1",
        text=text,
        answer=answer,
        verdict=verdict,
    )  # type: ignore[arg-type]


RIGHT = Attempt(question=QUESTION, path=path(0, "Step 1: 24 - 5 = 19.\nThe answer is 19.", "19", "correct"))
WRONG = Attempt(
    question=QUESTION,
    path=path(1, "Step 1: 3 + 8 = 11.\nStep 2: 11 - 5 = 6.\nThe answer is 6.", "6", "wrong"),
)
FIXED = CorrectedAttempt(
    question=QUESTION,
    path=WRONG.path,
    correction=Correction(
        id="c-1",
        path_id="p-1",
        question_id=QUESTION.id,
        incorrect_step=1,
        explanation="Multiply, do not add.",
        corrected_solution="Step 1: 3 * 8 = 24.\nThe answer is 19.",
        answer="19",
        verified=True,
        corrector_model="big",
        prompt_version="correct-gsm8k@1",
    ),
)


def feed(builder: DatasetBuilder, order: list[tuple[str, object]]) -> None:
    for topic, record in order:
        builder.add(topic, record)  # type: ignore[arg-type]


def test_dataset_files_are_idempotent_and_order_independent(tmp_path: Path) -> None:
    items = [
        (Topics.QUESTIONS, QUESTION),
        (Topics.COT, RIGHT),
        (Topics.MISTAKES, WRONG),
        (Topics.VERIFIED, FIXED),
        (Topics.DROPS, Drop(stage="correct", reason="missing_explanation", record_id="c-9")),
    ]
    once, twice = DatasetBuilder(DatasetSettings()), DatasetBuilder(DatasetSettings())
    feed(once, items)
    feed(twice, list(reversed(items)) + items)
    store_a, store_b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    once.write(store_a, "run")
    twice.write(store_b, "run")
    for name in ("cot.jsonl", "corrections.jsonl", "run_summary.json"):
        assert store_a.get_bytes(f"run/{name}") == store_b.get_bytes(f"run/{name}")

    cot = [json.loads(line) for line in store_a.get_bytes("run/cot.jsonl").decode().splitlines()]
    assert sorted(e["source"] for e in cot) == ["gold", "sampled"]
    (correction,) = [json.loads(line) for line in store_a.get_bytes("run/corrections.jsonl").decode().splitlines()]
    assert correction["input"].startswith(f"Question: {QUESTION.text}\n\nSolution:\nStep 1: 3 + 8 = 11.")
    assert correction["output"].startswith(
        "Incorrect Step: Step 1\nExplanation: Multiply, do not add.\nCorrect Solution:"
    )
    assert correction["output"].endswith("The answer is 19.")

    summary = json.loads(store_a.get_bytes("run/run_summary.json"))
    assert summary["stages"]["check"] == {"correct": 1, "wrong": 1}
    assert summary["samplers"]["m"] == {"paths": 1 + 1, "correct": 1, "accuracy": 0.5}
    assert summary["correction_yield"] == 1.0
    assert summary["drops"] == {"correct/missing_explanation": 1}


def test_parquet_and_hf_exports(tmp_path: Path) -> None:
    builder = DatasetBuilder(DatasetSettings(formats=("jsonl", "parquet", "hf")))
    feed(
        builder,
        [
            (Topics.QUESTIONS, QUESTION),
            (Topics.COT, RIGHT),
            (Topics.MISTAKES, WRONG),
            (Topics.VERIFIED, FIXED),
        ],
    )
    store = LocalStore(tmp_path)
    keys = builder.write(store, "run")
    assert {"run/cot.parquet", "run/corrections.parquet", "run/hf/dataset_dict.json"} <= set(keys)

    import datasets

    loaded = datasets.load_from_disk(str(tmp_path / "run" / "hf"))
    assert loaded["corrections"][0]["incorrect_step"] == 1
    assert len(loaded["cot"]) == 2
