"""Check: compare each sampled path's final answer with the gold answer."""

from __future__ import annotations

from collections.abc import Sequence

from lema.checker import Checker, CheckItem
from lema.records import Attempt


def check_attempts(attempts: Sequence[Attempt], checker: Checker) -> list[Attempt]:
    """The same attempts with `verdict`, `verdict_reason` and the checker's extracted answer filled in."""
    results = checker.check_batch(
        [CheckItem(a.path.text, a.question.gold, a.question.task, a.question.choices) for a in attempts]
    )
    return [
        a.model_copy(
            update={
                "path": a.path.model_copy(
                    update={
                        "verdict": "correct" if r.correct else "wrong",
                        "verdict_reason": r.reason,
                        "answer": r.predicted,
                    }
                )
            }
        )
        for a, r in zip(attempts, results, strict=True)
    ]
