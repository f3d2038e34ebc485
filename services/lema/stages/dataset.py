"""Dataset: the rows the dataset table holds for each record reaching the end of the pipeline, and the run summary.

Pure functions: `table_rows` turns the records of a topic into table rows (fine-tuning examples and the run's other
records), `summarize` counts what a run produced, `jsonl` renders examples as the fine-tuning files. Writing rows is
the dataset sink's job (`lema.dataset`); every row is keyed by its record's deterministic id, so a record delivered
twice is one row after deduplication, and files sorted by id are byte-identical whatever the arrival order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lema.bus.base import Topics
from lema.config import DatasetSettings
from lema.prompts import format_choices
from lema.records import (
    SCHEMA_VERSION,
    Attempt,
    CorrectedAttempt,
    CorrectionExample,
    CotExample,
    Drop,
    Question,
    ReasoningPath,
    Record,
    stable_id,
)

CORRECTION_INSTRUCTION = (
    "The solution above is wrong. Name the first incorrect step, explain the mistake, and write a corrected solution."
)


def question_input(question: Question) -> str:
    choices = format_choices(question.choices)
    return f"{question.text}\n{choices}" if choices else question.text


def cot_example(attempt: Attempt) -> CotExample:
    path = attempt.path
    return CotExample(
        id=path.id,
        question_id=attempt.question.id,
        task=attempt.question.task,
        source="sampled",
        model=path.model,
        round=attempt.question.round,
        input=question_input(attempt.question),
        output=path.text,
        answer=path.answer or attempt.question.gold,
    )


def gold_cot_example(question: Question) -> CotExample | None:
    if not question.reference_solution:
        return None
    return CotExample(
        id=stable_id("g", question.id),
        question_id=question.id,
        task=question.task,
        source="gold",
        model=None,
        round=question.round,
        input=question_input(question),
        output=question.reference_solution,
        answer=question.gold,
    )


def correction_output(incorrect_step: int | None, explanation: str, corrected_solution: str) -> str:
    return f"Incorrect Step: Step {incorrect_step}\nExplanation: {explanation}\nCorrect Solution:\n{corrected_solution}"


def correction_example(item: CorrectedAttempt) -> CorrectionExample:
    question, path, correction = item.question, item.path, item.correction
    return CorrectionExample(
        id=correction.id,
        question_id=question.id,
        path_id=path.id,
        task=question.task,
        round=question.round,
        question=question_input(question),
        wrong_solution=path.text,
        wrong_answer=path.answer,
        incorrect_step=correction.incorrect_step,
        explanation=correction.explanation,
        corrected_solution=correction.corrected_solution,
        answer=correction.answer or question.gold,
        sampler_model=path.model,
        corrector_model=correction.corrector_model,
        prompt_version=correction.prompt_version,
        input=f"Question: {question_input(question)}\n\nSolution:\n{path.text}\n\n{CORRECTION_INSTRUCTION}",
        output=correction_output(correction.incorrect_step, correction.explanation, correction.corrected_solution),
    )


Kind = Literal["questions", "paths", "cot", "corrections", "drops"]
KIND_RECORDS: dict[Kind, type[Record]] = {
    "questions": Question,
    "paths": ReasoningPath,
    "cot": CotExample,
    "corrections": CorrectionExample,
    "drops": Drop,
}
"""What the rows of each kind hold: the fine-tuning examples (cot, corrections) and the run's other records."""


@dataclass(frozen=True)
class TableRow:
    kind: Kind
    id: str
    """The record's deterministic id (a drop's key): rows with the same kind and id are the same record."""
    record: Record


def table_rows(topic: str, records: Sequence[Record], settings: DatasetSettings) -> list[TableRow]:
    """The dataset rows for records consumed from `topic`."""
    rows: list[TableRow] = []
    for record in records:
        if topic == Topics.QUESTIONS and isinstance(record, Question):
            rows.append(TableRow("questions", record.id, record))
            gold = gold_cot_example(record) if settings.include_gold_solutions else None
            if gold is not None:
                rows.append(TableRow("cot", gold.id, gold))
        elif topic in (Topics.COT, Topics.MISTAKES) and isinstance(record, Attempt):
            rows.append(TableRow("paths", record.path.id, record.path))
            if topic == Topics.COT:
                rows.append(TableRow("cot", record.path.id, cot_example(record)))
        elif topic == Topics.VERIFIED and isinstance(record, CorrectedAttempt):
            rows.append(TableRow("corrections", record.correction.id, correction_example(record)))
        elif topic == Topics.DROPS and isinstance(record, Drop):
            rows.append(TableRow("drops", record.key, record))
        else:
            raise ValueError(f"dataset: unexpected {type(record).__name__} on topic {topic!r}")
    return rows


def jsonl(records: Iterable[Record]) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in records).encode()


def summarize(
    question_rounds: Iterable[int],
    paths: Iterable[tuple[str, str | None]],
    verified: int,
    drops: Iterable[tuple[str, str]],
    cot_sources: Iterable[str],
) -> dict[str, Any]:
    """Counts per stage, per-sampler accuracy, correction yield and drop reasons, from the distinct records of a run:
    question rounds, (sampler model, verdict) per path, verified corrections, (stage, reason) per drop, and the
    source ('sampled'/'gold') of every CoT example."""
    rounds = Counter(str(r) for r in question_rounds)
    drop_list = list(drops)
    drops_by_stage = Counter(stage for stage, _ in drop_list)
    samplers: dict[str, dict[str, float]] = {}
    right = wrong = 0
    for model, verdict in paths:
        stats = samplers.setdefault(model, {"paths": 0, "correct": 0})
        stats["paths"] += 1
        stats["correct"] += verdict == "correct"
        right += verdict == "correct"
        wrong += verdict != "correct"
    for stats in samplers.values():
        stats["accuracy"] = round(stats["correct"] / stats["paths"], 4)
    sources = Counter(cot_sources)
    questions = sum(rounds.values())
    return {
        "schema_version": SCHEMA_VERSION,
        "questions": {
            "input": rounds.get("0", 0),
            "evolved": questions - rounds.get("0", 0),
            "by_round": dict(sorted(rounds.items())),
        },
        "stages": {
            "sample": {"paths": right + wrong},
            "check": {"correct": right, "wrong": wrong},
            "correct": {
                "mistakes": wrong,
                "parsed": verified + drops_by_stage["verify"],
                "dropped": drops_by_stage["correct"],
            },
            "verify": {"verified": verified, "rejected": drops_by_stage["verify"]},
            "evolve": {"kept": questions - rounds.get("0", 0), "dropped": drops_by_stage["evolve"]},
        },
        "samplers": dict(sorted(samplers.items())),
        "correction_yield": round(verified / wrong, 4) if wrong else None,
        "drops": dict(sorted(Counter(f"{stage}/{reason}" for stage, reason in drop_list).items())),
        "dataset": {
            "cot": sum(sources.values()),
            "cot_gold": sources["gold"],
            "corrections": verified,
        },
    }
