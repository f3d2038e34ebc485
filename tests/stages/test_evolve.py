from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from lema.config import EvolveSettings
from lema.records import Question
from lema.stages.evolve import QuestionIndex, clean_generated_question, evolve_questions

SEED = Question.create("A farmer has 3 pens with 4 goats each. How many goats are there?", "12", "gsm8k", "t:1")


def test_index_finds_exact_and_number_only_variants_but_not_new_questions() -> None:
    index = QuestionIndex(threshold=0.85)
    index.add(SEED)
    assert index.duplicate_of("a farmer has 3 pens with 4 goats   each. How many goats are there?") == (
        "exact_duplicate",
        SEED.id,
    )
    assert index.duplicate_of("A farmer has 7 pens with 9 goats each. How many goats are there?") == (
        "near_duplicate",
        SEED.id,
    )
    assert index.duplicate_of("A baker bakes 5 trays of 12 buns and sells 20. How many buns remain?") is None


def test_clean_generated_question_strips_label_and_any_solution() -> None:
    raw = "**New problem:** A shop has 5 boxes of 6 pens. How many pens?\nSolution: 5 * 6 = 30\nThe answer is 30."
    assert clean_generated_question(raw) == "A shop has 5 boxes of 6 pens. How many pens?"
    assert clean_generated_question("Question 2: How many?\nStep 1: count") == "How many?"


def evolve_with(rule_llm: Callable[..., Any], drafts: list[str], answers: dict[str, list[str]], **settings: Any):  # type: ignore[no-untyped-def]
    next_draft = itertools.cycle(drafts)
    next_vote = {key: itertools.cycle(options) for key, options in answers.items()}

    def generate(prompt: str, seed: int) -> str:
        return next(next_draft)

    def answer(prompt: str, seed: int) -> str:
        options = next(v for k, v in next_vote.items() if k in prompt)
        return f"Step 1: think.\nThe answer is {next(options)}."

    index = QuestionIndex(threshold=0.85)
    index.add(SEED)
    config = EvolveSettings(questions_per_seed=len(drafts), **settings)
    return evolve_questions([SEED], rule_llm(generate, "gen"), [rule_llm(answer, "voter")], index, config), index


def test_majority_vote_sets_gold_and_round(rule_llm: Callable[..., Any]) -> None:
    draft = "New problem: A library lends 14 books a day for 6 days. How many books does it lend in total?"
    (kept, drops), index = evolve_with(rule_llm, [draft], {"library": ["84"] * 4 + ["80"]}, votes=5)
    assert drops == []
    (question,) = kept
    assert (question.gold, question.round, question.parent_id, question.source) == (
        "84",
        1,
        SEED.id,
        "evolved",
    )
    assert len(index) == 2


def test_drops_have_reasons(rule_llm: Callable[..., Any]) -> None:
    drafts = [
        "Too short?",
        "A farmer has 8 pens with 2 goats each. How many goats are there?",  # number-only variant of the seed
        "A library lends 14 books a day for 6 days. How many books does it lend in total?",
    ]
    (kept, drops), _ = evolve_with(rule_llm, drafts, {"library": ["84", "80", "81"]}, votes=3)
    assert kept == []
    assert sorted(d.reason for d in drops) == ["near_duplicate", "no_majority", "too_short"]


def test_tie_is_no_majority(rule_llm: Callable[..., Any]) -> None:
    draft = "A library lends 14 books a day for 6 days. How many books does it lend in total?"
    (kept, drops), _ = evolve_with(rule_llm, [draft], {"library": ["84", "80"]}, votes=4, majority=0.4)
    assert kept == []
    assert [d.reason for d in drops] == ["no_majority"]
