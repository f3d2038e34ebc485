"""Typed records that flow between the LEMA stages.

Every id is derived from content and generation parameters (never from time or randomness), so re-running the same
work produces the same ids: a resumed run, a redelivered Kafka message or a second replica never duplicates a record.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Task = Literal["gsm8k", "math", "mcq"]
Verdict = Literal["correct", "wrong"]

SCHEMA_VERSION = 1


def stable_id(prefix: str, *parts: Any) -> str:
    """A short content hash: `prefix` + 16 hex digits of sha256 over the canonical JSON of `parts`."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"{prefix}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Question(Record):
    id: str
    text: str
    gold: str = Field(description="The gold final answer (bare, e.g. '18' or '\\frac{1}{2}' or 'C').")
    task: Task
    choices: tuple[str, ...] = ()
    source: str = Field(description="Where it came from: 'file.jsonl:LINE' for inputs, 'evolved' for new questions.")
    parent_id: str | None = None
    round: int = Field(0, ge=0, description="Evolution round: 0 for input questions, r for questions evolved in r.")
    reference_solution: str | None = Field(None, description="A gold worked solution, when the input has one.")

    @staticmethod
    def make_id(text: str, task: Task, choices: tuple[str, ...] = ()) -> str:
        return stable_id("q", task, " ".join(text.split()), list(choices))

    @classmethod
    def create(
        cls,
        text: str,
        gold: str,
        task: Task,
        source: str,
        *,
        choices: tuple[str, ...] = (),
        parent_id: str | None = None,
        round: int = 0,
        reference_solution: str | None = None,
    ) -> Question:
        return cls(
            id=cls.make_id(text, task, choices),
            text=text,
            gold=gold,
            task=task,
            choices=choices,
            source=source,
            parent_id=parent_id,
            round=round,
            reference_solution=reference_solution,
        )

    @property
    def key(self) -> str:
        return self.id


class GenerationParams(Record):
    """Sampling parameters that, with the prompt and model, determine a completion."""

    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, gt=0)
    stop: tuple[str, ...] = ()
    seed: int = 0


class ReasoningPath(Record):
    id: str
    question_id: str
    model: str
    sample_index: int = Field(ge=0)
    prompt_version: str
    text: str
    answer: str | None = Field(None, description="The extracted final answer, None when none could be extracted.")
    verdict: Verdict | None = Field(None, description="None until checked against gold.")
    verdict_reason: str | None = None

    @staticmethod
    def make_id(question_id: str, model: str, sample_index: int, prompt_version: str, params: GenerationParams) -> str:
        return stable_id("p", question_id, model, sample_index, prompt_version, params.model_dump())


class Correction(Record):
    id: str
    path_id: str
    question_id: str
    incorrect_step: int | None = Field(None, description="1-based number of the first incorrect step.")
    explanation: str
    corrected_solution: str
    answer: str | None
    verified: bool = False
    verify_reason: str | None = None
    corrector_model: str
    prompt_version: str

    @staticmethod
    def make_id(path_id: str, corrector_model: str, prompt_version: str, params: GenerationParams) -> str:
        return stable_id("c", path_id, corrector_model, prompt_version, params.model_dump())


class Attempt(Record):
    """A sampled path with the question it answers: self-contained, so any worker can check or correct it."""

    question: Question
    path: ReasoningPath

    @property
    def key(self) -> str:
        return self.path.id


class CorrectedAttempt(Record):
    """A wrong path, its correction and the question: everything a correction example in the dataset needs."""

    question: Question
    path: ReasoningPath
    correction: Correction

    @property
    def key(self) -> str:
        return self.correction.id


class Drop(Record):
    """Something a stage discarded, and why. Every drop is counted in the run summary; none stops a run."""

    stage: str
    reason: str
    record_id: str
    detail: str = ""

    @property
    def key(self) -> str:
        return stable_id("d", self.stage, self.reason, self.record_id)


class CotExample(Record):
    """One line of `cot.jsonl`: a correct chain-of-thought solution. `input`/`output` are what fine-tuning sees."""

    id: str
    question_id: str
    task: Task
    source: Literal["sampled", "gold"]
    model: str | None
    round: int
    input: str
    output: str
    answer: str


class CorrectionExample(Record):
    """One line of `corrections.jsonl`: input = question + wrong solution; output = step + explanation + fix."""

    id: str
    question_id: str
    path_id: str
    task: Task
    round: int
    question: str
    wrong_solution: str
    wrong_answer: str | None
    incorrect_step: int | None
    explanation: str
    corrected_solution: str
    answer: str
    sampler_model: str
    corrector_model: str
    prompt_version: str
    input: str
    output: str
