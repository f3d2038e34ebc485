"""Verify: keep a correction only if its final answer matches the gold answer."""

from __future__ import annotations

from collections.abc import Sequence

from lema.checker import Checker, CheckItem
from lema.records import CorrectedAttempt, Drop

STAGE = "verify"


def verify_corrections(
    items: Sequence[CorrectedAttempt], checker: Checker
) -> tuple[list[CorrectedAttempt], list[Drop]]:
    results = checker.check_batch(
        [
            CheckItem(i.correction.corrected_solution, i.question.gold, i.question.task, i.question.choices)
            for i in items
        ]
    )
    verified: list[CorrectedAttempt] = []
    drops: list[Drop] = []
    for item, result in zip(items, results, strict=True):
        if result.correct:
            correction = item.correction.model_copy(update={"verified": True, "verify_reason": result.reason})
            verified.append(item.model_copy(update={"correction": correction}))
        else:
            drops.append(Drop(stage=STAGE, reason="wrong_answer", record_id=item.correction.id, detail=result.reason))
    return verified, drops
