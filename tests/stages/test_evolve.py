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


def _brute_force(index: QuestionIndex, questions: list[Question], text: str) -> tuple[str, str] | None:
    """The definition the index must agree with: the first known question (by id) at or above the threshold."""
    probe = QuestionIndex(index.threshold)
    probe.add(Question.create(text, "0", "gsm8k", "probe"))
    (shingles,) = probe._shingles.values()
    for known in sorted(questions, key=lambda q: q.id):
        other = index._shingles[known.id]
        if len(shingles & other) / len(shingles | other) >= index.threshold:
            return "near_duplicate", known.id
    return None


def test_near_duplicate_lookup_reads_only_rare_postings_and_agrees_with_a_full_scan() -> None:
    """Every known question shares the bigrams 'how many' and 'are there': a full union of postings would read
    them all; the prefix filter must still find exactly what a scan over every question finds."""
    words = [f"w{i}" for i in range(60)]
    questions = [
        Question.create(
            f"A {words[i % 60]} has {i} {words[(i * 7) % 60]} and {words[(i * 13) % 60]} of {words[(i * 5) % 60]}. "
            "How many items are there?",
            "1",
            "gsm8k",
            f"t:{i}",
        )
        for i in range(400)
    ]
    index = QuestionIndex(threshold=0.6)
    for question in questions:
        index.add(question)
    probes = [q.text.replace("items", "things") for q in questions[:60]] + [
        "A w1 has 3 w7 and w13 of w5. How many items are there?",
        "Something entirely new about w3 and w9, with no shared phrase at all here.",
    ]
    for text in probes:
        assert index.duplicate_of(text) == _brute_force(index, questions, text), text
    assert index.knows(questions[0].id) and not index.knows("q-unknown")
