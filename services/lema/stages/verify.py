"""Verify: keep a correction only if its final answer matches the gold answer and it passes the quality gates
(`correction_gates.py`); each rejection is a drop whose reason names the answer check or the gate."""

from __future__ import annotations

from collections.abc import Sequence

from lema.checker import Checker, CheckItem
from lema.records import CorrectedAttempt, Drop
from lema.stages.correction_gates import first_gate_failure

STAGE = "verify"


def verify_corrections(
    items: Sequence[CorrectedAttempt], checker: Checker, *, show_gold: bool = False
) -> tuple[list[CorrectedAttempt], list[Drop]]:
    """`show_gold`: the corrector was shown the gold answer, so a solution that only restates it is dropped."""
    results = checker.check_batch(
        [
            CheckItem(i.correction.corrected_solution, i.question.gold, i.question.task, i.question.choices)
            for i in items
        ]
    )
    verified: list[CorrectedAttempt] = []
    drops: list[Drop] = []
    for item, result in zip(items, results, strict=True):
        failure = first_gate_failure(item, show_gold) if result.correct else None
        if failure is not None:
            drops.append(Drop(stage=STAGE, reason=failure.reason, record_id=item.correction.id, detail=failure.detail))
        elif result.correct:
            correction = item.correction.model_copy(update={"verified": True, "verify_reason": result.reason})
            verified.append(item.model_copy(update={"correction": correction}))
        else:
            drops.append(Drop(stage=STAGE, reason="wrong_answer", record_id=item.correction.id, detail=result.reason))
    return verified, drops
