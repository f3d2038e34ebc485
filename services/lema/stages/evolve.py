"""Evolve: correction-centric question evolution.

Seeds are questions that produced a verified correction (where models err and can be taught). A generator LLM writes
new questions from each seed; each new question's gold answer is the majority vote of `votes` sampled answers, and a
question without a clear majority, without a numeric answer, or too close to a known question is dropped.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lema.checker import canonical_answer, extract_answer
from lema.config import EvolveSettings
from lema.inputs import is_numeric_answer
from lema.llm.base import GenerationRequest, LLMBackend
from lema.prompts import load_prompt
from lema.records import Drop, Question, stable_id
from lema.stages.sample import seeded

STAGE = "evolve"
MIN_WORDS = 8
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_MARKDOWN = re.compile(r"\*\*|__|`|^#+", re.MULTILINE)
_LABEL = re.compile(r"^\W*(?:new\s+)?(?:problem|question)\s*\d*\s*[:.]\s*", re.IGNORECASE)
_SOLVING = re.compile(r"\n\s*(?:\W*(?:solution|answer|step\s*1)\b)", re.IGNORECASE)


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _shingles(text: str) -> frozenset[str]:
    """Word bigrams with numbers masked: a copy with only the numbers changed is still a near duplicate."""
    words = _NUMBER.sub("#", _normalise(text)).split()
    return frozenset(" ".join(pair) for pair in itertools.pairwise(words)) or frozenset(words)


@dataclass
class QuestionIndex:
    """Exact and near-duplicate lookup over every question known to the run."""

    threshold: float
    _exact: dict[str, str] = field(default_factory=dict)
    _shingles: dict[str, frozenset[str]] = field(default_factory=dict)
    _postings: dict[str, set[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._shingles)

    def knows(self, question_id: str) -> bool:
        return question_id in self._shingles

    def add(self, question: Question) -> None:
        if question.id in self._shingles:
            return
        self._exact.setdefault(_normalise(question.text), question.id)
        shingles = _shingles(question.text)
        self._shingles[question.id] = shingles
        for shingle in shingles:
            self._postings.setdefault(shingle, set()).add(question.id)

    def duplicate_of(self, text: str) -> tuple[str, str] | None:
        """(`exact_duplicate` | `near_duplicate`, id of the known question), or None for a new question.

        Exact prefix filtering keeps the cost independent of how many questions are known: a question with Jaccard
        similarity >= t shares at least k = ceil(t * |S|) of the probe's shingles S, so it holds one of any
        |S| - k + 1 of them; only the postings of that many *rarest* shingles are read, never those of a bigram
        every question has ("how many").
        """
        exact = self._exact.get(_normalise(text))
        if exact is not None:
            return "exact_duplicate", exact
        shingles = _shingles(text)
        must_share = math.ceil(self.threshold * len(shingles) - 1e-9)
        rarest = sorted(shingles, key=lambda s: len(self._postings.get(s, ())))[: len(shingles) - must_share + 1]
        candidates = set().union(*(self._postings.get(s, set()) for s in rarest))
        for known in sorted(candidates):
            other = self._shingles[known]
            if len(shingles & other) / len(shingles | other) >= self.threshold:
                return "near_duplicate", known
        return None


def clean_generated_question(text: str) -> str:
    """The question alone: label stripped, anything after it (a solution, an answer) cut off."""
    text = _LABEL.sub("", _MARKDOWN.sub("", text).strip())
    text = _SOLVING.split(text, maxsplit=1)[0]
    return " ".join(text.split())


def _generate(
    seeds: Sequence[Question], generator: LLMBackend, settings: EvolveSettings, prompts_dir: Path | None
) -> list[tuple[Question, str, str]]:
    """(seed, candidate id, candidate text) for each of `questions_per_seed` drafts per seed."""
    prompt = load_prompt("evolve", None, prompts_dir)
    requests, keys = [], []
    for seed in seeds:
        messages = prompt.render(question=seed.text)
        for index in range(settings.questions_per_seed):
            draft_id = stable_id("e", seed.id, generator.model, prompt.version_tag, index, settings.params.model_dump())
            requests.append(GenerationRequest(messages, seeded(settings.params, draft_id)))
            keys.append((seed, draft_id))
    completions = generator.generate(requests) if requests else []
    return [
        (seed, draft_id, clean_generated_question(completion.text))
        for (seed, draft_id), (completion, *_) in zip(keys, completions, strict=True)
    ]


def _vote(
    drafts: Sequence[tuple[Question, str, str]],
    voters: Sequence[LLMBackend],
    settings: EvolveSettings,
    prompts_dir: Path | None,
) -> list[Counter[str]]:
    """For each draft, a count of canonical numeric answers over `settings.votes` samples spread across voters."""
    prompt = load_prompt("sample", "gsm8k", prompts_dir)
    per_voter: dict[int, list[tuple[int, GenerationRequest]]] = {}
    for d, (_, draft_id, text) in enumerate(drafts):
        messages = prompt.render(question=text, choices="")
        for vote in range(settings.votes):
            request = GenerationRequest(messages, seeded(settings.vote_params, f"{draft_id}:{vote}"))
            per_voter.setdefault(vote % len(voters), []).append((d, request))
    tallies: list[Counter[str]] = [Counter() for _ in drafts]
    for v, jobs in sorted(per_voter.items()):
        completions = voters[v].generate([request for _, request in jobs])
        for (d, _), (completion, *_) in zip(jobs, completions, strict=True):
            answer = extract_answer(completion.text, "gsm8k").answer
            if answer is not None:
                tallies[d][canonical_answer(answer, "gsm8k")] += 1
    return tallies


def evolve_questions(
    seeds: Sequence[Question],
    generator: LLMBackend,
    voters: Sequence[LLMBackend],
    index: QuestionIndex,
    settings: EvolveSettings,
    prompts_dir: Path | None = None,
) -> tuple[list[Question], list[Drop]]:
    """New questions (round = seed round + 1) with majority-vote gold; `index` learns every kept question."""
    outcomes = [outcome for _, outcome in _evolve(seeds, generator, voters, index, settings, prompts_dir)]
    return [o for o in outcomes if isinstance(o, Question)], [o for o in outcomes if isinstance(o, Drop)]


def evolve_by_seed(
    seeds: Sequence[Question],
    generator: LLMBackend,
    voters: Sequence[LLMBackend],
    index: QuestionIndex,
    settings: EvolveSettings,
    prompts_dir: Path | None = None,
) -> dict[str, tuple[list[Question], list[Drop]]]:
    """`evolve_questions`, its results grouped by seed id (every seed has an entry): what each seed produced."""
    by_seed: dict[str, tuple[list[Question], list[Drop]]] = {seed.id: ([], []) for seed in seeds}
    for seed_id, outcome in _evolve(seeds, generator, voters, index, settings, prompts_dir):
        questions, drops = by_seed[seed_id]
        if isinstance(outcome, Question):
            questions.append(outcome)
        else:
            drops.append(outcome)
    return by_seed


def _evolve(
    seeds: Sequence[Question],
    generator: LLMBackend,
    voters: Sequence[LLMBackend],
    index: QuestionIndex,
    settings: EvolveSettings,
    prompts_dir: Path | None,
) -> list[tuple[str, Question | Drop]]:
    """(seed id, kept question or drop) for every draft: the drafts' own filters first, then the vote's."""
    drafts: list[tuple[Question, str, str]] = []
    outcomes: list[tuple[str, Question | Drop]] = []
    for seed, draft_id, text in _generate(seeds, generator, settings, prompts_dir):
        if len(text.split()) < MIN_WORDS:
            outcomes.append((seed.id, Drop(stage=STAGE, reason="too_short", record_id=draft_id, detail=text[:200])))
        elif (duplicate := index.duplicate_of(text)) is not None:
            outcomes.append((seed.id, Drop(stage=STAGE, reason=duplicate[0], record_id=draft_id, detail=duplicate[1])))
        else:
            drafts.append((seed, draft_id, text))
    for (seed, draft_id, text), tally in zip(drafts, _vote(drafts, voters, settings, prompts_dir), strict=True):
        top = tally.most_common(2)
        drop: Drop | None = None
        if not top or top[0][1] <= settings.majority * settings.votes or (len(top) > 1 and top[1][1] == top[0][1]):
            drop = Drop(stage=STAGE, reason="no_majority", record_id=draft_id, detail=str(dict(tally)))
        elif not is_numeric_answer(gold := top[0][0]):
            drop = Drop(stage=STAGE, reason="non_numeric_answer", record_id=draft_id, detail=gold)
        elif (duplicate := index.duplicate_of(text)) is not None:  # a sibling from this batch got there first
            drop = Drop(stage=STAGE, reason=duplicate[0], record_id=draft_id, detail=duplicate[1])
        if drop is not None:
            outcomes.append((seed.id, drop))
            continue
        question = Question.create(text, gold, "gsm8k", source="evolved", parent_id=seed.id, round=seed.round + 1)
        index.add(question)
        outcomes.append((seed.id, question))
    return outcomes
