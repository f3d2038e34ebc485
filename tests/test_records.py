from __future__ import annotations

from lema.records import Correction, GenerationParams, Question, ReasoningPath


def test_question_id_depends_on_content_not_whitespace_or_provenance() -> None:
    a = Question.create("How many  apples?", "3", "gsm8k", "a.jsonl:1")
    b = Question.create("How many apples?", "3", "gsm8k", "b.jsonl:9")
    assert a.id == b.id
    assert a.id != Question.create("How many pears?", "3", "gsm8k", "a.jsonl:1").id
    assert a.id != Question.create("How many apples?", "3", "math", "a.jsonl:1").id


def test_path_and_correction_ids_depend_on_generation_parameters() -> None:
    params = GenerationParams(temperature=0.7, seed=1)
    base = ReasoningPath.make_id("q-1", "m", 0, "sample-gsm8k@1", params)
    assert base == ReasoningPath.make_id("q-1", "m", 0, "sample-gsm8k@1", GenerationParams(temperature=0.7, seed=1))
    assert base != ReasoningPath.make_id("q-1", "m", 1, "sample-gsm8k@1", params)
    assert base != ReasoningPath.make_id("q-1", "m", 0, "sample-gsm8k@2", params)
    assert base != ReasoningPath.make_id("q-1", "m", 0, "sample-gsm8k@1", params.model_copy(update={"seed": 2}))
    assert Correction.make_id(base, "c", "v", params) != Correction.make_id(base, "c2", "v", params)
