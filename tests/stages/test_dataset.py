from __future__ import annotations

import pytest

from lema.bus.base import Topics
from lema.config import DatasetSettings
from lema.records import Attempt, CorrectedAttempt, Correction, CorrectionExample, Drop, Question, ReasoningPath
from lema.stages.dataset import summarize, table_rows

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


def test_table_rows_hold_each_record_and_its_examples() -> None:
    settings = DatasetSettings()
    (question, gold) = table_rows(Topics.QUESTIONS, [QUESTION], settings)
    assert (question.kind, question.id, question.record) == ("questions", QUESTION.id, QUESTION)
    assert gold.kind == "cot" and gold.record.source == "gold"  # type: ignore[attr-defined]
    assert len(table_rows(Topics.QUESTIONS, [QUESTION], DatasetSettings(include_gold_solutions=False))) == 1
    path, cot = table_rows(Topics.COT, [RIGHT], settings)
    assert (path.kind, path.record, cot.kind, cot.id) == ("paths", RIGHT.path, "cot", RIGHT.path.id)
    assert [r.kind for r in table_rows(Topics.MISTAKES, [WRONG], settings)] == ["paths"]
    drop = Drop(stage="correct", reason="missing_explanation", record_id="c-9")
    assert table_rows(Topics.DROPS, [drop], settings)[0].id == drop.key
    (correction,) = table_rows(Topics.VERIFIED, [FIXED], settings)
    example = correction.record
    assert isinstance(example, CorrectionExample) and correction.id == "c-1"
    assert example.input.startswith(f"Question: {QUESTION.text}\n\nSolution:\nStep 1: 3 + 8 = 11.")
    assert example.output.startswith("Incorrect Step: Step 1\nExplanation: Multiply, do not add.\nCorrect Solution:")
    assert example.output.endswith("The answer is 19.")
    with pytest.raises(ValueError, match="unexpected Question on topic 'drops'"):
        table_rows(Topics.DROPS, [QUESTION], settings)


def test_summary_counts() -> None:
    summary = summarize(
        question_rounds=[0, 0, 1],
        paths=[("m", "correct"), ("m", "wrong"), ("n", "wrong")],
        verified=1,
        drops=[("verify", "wrong_answer"), ("correct", "missing_explanation"), ("evolve", "duplicate")],
        cot_sources=["sampled", "gold", "gold"],
    )
    assert summary["questions"] == {"input": 2, "evolved": 1, "by_round": {"0": 2, "1": 1}}
    assert summary["stages"]["check"] == {"correct": 1, "wrong": 2}
    assert summary["stages"]["correct"] == {"mistakes": 2, "parsed": 2, "dropped": 1}
    assert summary["samplers"] == {
        "m": {"paths": 2, "correct": 1, "accuracy": 0.5},
        "n": {"paths": 1, "correct": 0, "accuracy": 0.0},
    }
    assert summary["correction_yield"] == 0.5
    assert summary["drops"] == {"correct/missing_explanation": 1, "evolve/duplicate": 1, "verify/wrong_answer": 1}
    assert summary["dataset"] == {"cot": 3, "cot_gold": 2, "corrections": 1}
    assert summarize([], [], 0, [], [])["correction_yield"] is None
