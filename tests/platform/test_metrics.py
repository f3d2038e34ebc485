"""What the workers' outputs add to the Prometheus counters."""

from __future__ import annotations

from prometheus_client import REGISTRY

from lema.bus.base import Message, Topics
from lema.records import Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath
from lema.runtime.metrics import observe_outputs

QUESTION = Question.create("What is 1 + 1?", "2", "gsm8k", "m:1")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_verdicts_correction_outcomes_and_drops_are_read_off_the_records() -> None:
    path = ReasoningPath(
        id="p", question_id=QUESTION.id, model="m", sample_index=0, prompt_version="v", text="2", verdict="wrong"
    )
    correction = Correction(
        id="c",
        path_id="p",
        question_id=QUESTION.id,
        explanation="e",
        corrected_solution="The answer is 2",
        answer="2",
        verified=True,
        corrector_model="m",
        prompt_version="v",
    )
    verified = CorrectedAttempt(question=QUESTION, path=path, correction=correction)
    rejected = Drop(stage="verify", reason="wrong_answer", record_id="c2")
    unparsed = Drop(stage="correct", reason="no_incorrect_step", record_id="c3")
    before = {
        "wrong": sample("lema_checker_verdicts_total", verdict="wrong"),
        "verified": sample("lema_corrections_total", outcome="verified"),
        "rejected": sample("lema_corrections_total", outcome="rejected"),
        "unparsed": sample("lema_drops_total", stage="correct", reason="no_incorrect_step"),
    }
    observe_outputs(
        [
            Message(Topics.MISTAKES, "p", Attempt(question=QUESTION, path=path)),
            Message(Topics.VERIFIED, "c", verified),
            Message(Topics.DROPS, rejected.key, rejected),
            Message(Topics.DROPS, unparsed.key, unparsed),
            Message(Topics.QUESTIONS, QUESTION.key, QUESTION),  # counted by no one
        ]
    )
    assert sample("lema_checker_verdicts_total", verdict="wrong") == before["wrong"] + 1
    assert sample("lema_corrections_total", outcome="verified") == before["verified"] + 1
    assert sample("lema_corrections_total", outcome="rejected") == before["rejected"] + 1
    assert sample("lema_drops_total", stage="correct", reason="no_incorrect_step") == before["unparsed"] + 1
