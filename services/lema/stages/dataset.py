"""Dataset: turn checked paths and verified corrections into fine-tuning files, plus the run summary.

`DatasetBuilder` is an idempotent sink: every record is keyed by its deterministic id, so a record delivered twice is
kept once, and files are written sorted by id, so the same records give byte-identical files whatever the order
in which they arrived.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    Record,
    stable_id,
)
from lema.store.base import ArtifactStore

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


def _jsonl(records: Iterable[Record]) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in records).encode()


class DatasetBuilder:
    """Collects the records that reach the end of the pipeline; writes the dataset and the run summary."""

    def __init__(self, settings: DatasetSettings) -> None:
        self.settings = settings
        self.questions: dict[str, Question] = {}
        self.correct: dict[str, Attempt] = {}
        self.wrong: dict[str, Attempt] = {}
        self.verified: dict[str, CorrectedAttempt] = {}
        self.drops: dict[str, Drop] = {}

    def add(self, topic: str, record: Record) -> None:
        if topic == Topics.QUESTIONS and isinstance(record, Question):
            self.questions.setdefault(record.id, record)
        elif topic == Topics.COT and isinstance(record, Attempt):
            self.correct.setdefault(record.path.id, record)
        elif topic == Topics.MISTAKES and isinstance(record, Attempt):
            self.wrong.setdefault(record.path.id, record)
        elif topic == Topics.VERIFIED and isinstance(record, CorrectedAttempt):
            self.verified.setdefault(record.correction.id, record)
        elif topic == Topics.DROPS and isinstance(record, Drop):
            self.drops.setdefault(record.key, record)
        else:
            raise ValueError(f"dataset builder: unexpected {type(record).__name__} on topic {topic!r}")

    def cot_examples(self) -> list[CotExample]:
        examples = [cot_example(a) for a in self.correct.values()]
        if self.settings.include_gold_solutions:
            examples += [e for q in self.questions.values() if (e := gold_cot_example(q)) is not None]
        return sorted(examples, key=lambda e: e.id)

    def correction_examples(self) -> list[CorrectionExample]:
        return sorted((correction_example(v) for v in self.verified.values()), key=lambda e: e.id)

    def summary(self) -> dict[str, Any]:
        """Counts per stage, per-sampler accuracy, correction yield and drop reasons."""
        drops_by_stage = Counter(d.stage for d in self.drops.values())
        samplers: dict[str, dict[str, float]] = {}
        for attempt in [*self.correct.values(), *self.wrong.values()]:
            stats = samplers.setdefault(attempt.path.model, {"paths": 0, "correct": 0})
            stats["paths"] += 1
            stats["correct"] += attempt.path.verdict == "correct"
        for stats in samplers.values():
            stats["accuracy"] = round(stats["correct"] / stats["paths"], 4)
        rounds = Counter(str(q.round) for q in self.questions.values())
        corrections = len(self.verified) + drops_by_stage["verify"]
        cot = self.cot_examples()
        return {
            "schema_version": SCHEMA_VERSION,
            "questions": {
                "input": rounds.get("0", 0),
                "evolved": len(self.questions) - rounds.get("0", 0),
                "by_round": dict(sorted(rounds.items())),
            },
            "stages": {
                "sample": {"paths": len(self.correct) + len(self.wrong)},
                "check": {"correct": len(self.correct), "wrong": len(self.wrong)},
                "correct": {
                    "mistakes": len(self.wrong),
                    "parsed": corrections,
                    "dropped": drops_by_stage["correct"],
                },
                "verify": {"verified": len(self.verified), "rejected": drops_by_stage["verify"]},
                "evolve": {
                    "kept": len(self.questions) - rounds.get("0", 0),
                    "dropped": drops_by_stage["evolve"],
                },
            },
            "samplers": dict(sorted(samplers.items())),
            "correction_yield": round(len(self.verified) / len(self.wrong), 4) if self.wrong else None,
            "drops": dict(sorted(Counter(f"{d.stage}/{d.reason}" for d in self.drops.values()).items())),
            "dataset": {
                "cot": len(cot),
                "cot_gold": sum(e.source == "gold" for e in cot),
                "corrections": len(self.verified),
            },
        }

    def write(self, store: ArtifactStore, prefix: str, extra_summary: dict[str, Any] | None = None) -> list[str]:
        """Write `cot.jsonl`, `corrections.jsonl` (+ Parquet / HF exports) and `run_summary.json` under `prefix`."""
        cot, corrections = self.cot_examples(), self.correction_examples()
        written = {f"{prefix}/cot.jsonl": _jsonl(cot), f"{prefix}/corrections.jsonl": _jsonl(corrections)}
        for key, data in written.items():
            store.put_bytes(key, data)
        keys = list(written)
        if "parquet" in self.settings.formats or "hf" in self.settings.formats:
            keys += _export(store, prefix, cot, corrections, self.settings)
        summary = {**self.summary(), **(extra_summary or {})}
        store.put_bytes(f"{prefix}/run_summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return [*keys, f"{prefix}/run_summary.json"]


def _export(
    store: ArtifactStore,
    prefix: str,
    cot: list[CotExample],
    corrections: list[CorrectionExample],
    settings: DatasetSettings,
) -> list[str]:
    """Parquet files and/or a Hugging Face `DatasetDict` saved to disk, uploaded through the store."""
    import datasets

    splits = {
        "cot": datasets.Dataset.from_list([e.model_dump() for e in cot]),
        "corrections": datasets.Dataset.from_list([e.model_dump() for e in corrections]),
    }
    keys: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "parquet" in settings.formats:
            for name, split in splits.items():
                split.to_parquet(str(root / f"{name}.parquet"))
                store.upload_file(f"{prefix}/{name}.parquet", root / f"{name}.parquet")
                keys.append(f"{prefix}/{name}.parquet")
        if "hf" in settings.formats:
            datasets.DatasetDict(splits).save_to_disk(str(root / "hf"))
            for file in sorted(p for p in (root / "hf").rglob("*") if p.is_file()):
                key = f"{prefix}/hf/{file.relative_to(root / 'hf').as_posix()}"
                store.upload_file(key, file)
                keys.append(key)
    return keys
