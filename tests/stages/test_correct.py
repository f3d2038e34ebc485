from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lema.config import CorrectSettings
from lema.records import Attempt, Question, ReasoningPath
from lema.stages.correct import correct_attempts

QUESTION = Question.create(
    "A pool holds 1200 liters and fills at 40 liters a minute. Minutes to fill it?", "30", "gsm8k", "t:1"
)
WRONG = Attempt(
    question=QUESTION,
    path=ReasoningPath(
        id="p-1",
        question_id=QUESTION.id,
        model="m",
        sample_index=0,
        prompt_version="v",
        text="Step 1: 1200 - 40 = 1160.\nThe answer is 1160.",
        answer="1160",
        verdict="wrong",
    ),
)
ECHOING = (
    "Incorrect Step: Step 1\nExplanation: subtracting is wrong.\nCorrect Solution:\nStep 1: 1200 - 300 = 900.\n"
    "The answer is 900.\n(For reference, the correct final answer is 30.)"
)


def test_an_echoed_gold_hint_is_not_taken_for_the_corrections_answer(rule_llm: Callable[..., Any]) -> None:
    backend = rule_llm(lambda prompt, seed: ECHOING)
    (corrected,), drops = correct_attempts([WRONG], backend, CorrectSettings(show_gold=True))
    assert drops == []
    assert "correct final answer is 30" in backend.calls[0].messages[-1].content
    assert corrected.correction.answer == "900"
    assert "For reference" not in corrected.correction.corrected_solution


def test_unparseable_output_is_a_counted_drop(rule_llm: Callable[..., Any]) -> None:
    corrected, (drop,) = correct_attempts([WRONG], rule_llm(lambda p, s: "I cannot help."), CorrectSettings())
    assert corrected == []
    assert (drop.stage, drop.reason) == ("correct", "missing_incorrect_step")
