"""Records for the dataset tests: three questions with right and wrong paths, two verified corrections, a drop."""

from __future__ import annotations

from lema.bus.base import Topics
from lema.records import Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath, Record, Verdict


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
