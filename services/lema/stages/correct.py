"""Correct: a corrector LLM names the first incorrect step, explains it and rewrites the solution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lema.checker import extract_answer
from lema.config import CorrectSettings
from lema.llm.base import GenerationRequest, LLMBackend
from lema.prompts import format_choices, load_prompt
from lema.records import Attempt, CorrectedAttempt, Correction, Drop
from lema.stages.correction_parser import ParseFailure, parse_correction
from lema.stages.sample import seeded

STAGE = "correct"


def correct_attempts(
    attempts: Sequence[Attempt],
    backend: LLMBackend,
    settings: CorrectSettings,
    prompts_dir: Path | None = None,
) -> tuple[list[CorrectedAttempt], list[Drop]]:
    """One correction per wrong attempt; outputs that cannot be parsed become counted drops."""
    requests: list[GenerationRequest] = []
    pending: list[tuple[Attempt, str, str, str]] = []
    for attempt in attempts:
        question = attempt.question
        prompt = load_prompt("correct", question.task, prompts_dir)
        hint = prompt.render_hint(gold=question.gold) if settings.show_gold else ""
        messages = prompt.render(
            question=question.text,
            choices=format_choices(question.choices),
            solution=attempt.path.text,
            hint=hint,
            gold=question.gold,
        )
        correction_id = Correction.make_id(attempt.path.id, backend.model, prompt.version_tag, settings.params)
        requests.append(GenerationRequest(messages, seeded(settings.params, correction_id)))
        pending.append((attempt, correction_id, prompt.version_tag, hint))
    completions = backend.generate(requests) if requests else []
    corrected: list[CorrectedAttempt] = []
    drops: list[Drop] = []
    for (attempt, correction_id, version, hint), (completion, *_) in zip(pending, completions, strict=True):
        # A corrector that repeats the gold hint must not have the hint's answer taken for its own.
        output = completion.text.replace(hint, "") if hint else completion.text
        parsed = parse_correction(output, attempt.path.text)
        if isinstance(parsed, ParseFailure):
            drops.append(Drop(stage=STAGE, reason=parsed.reason, record_id=correction_id, detail=output[:500]))
            continue
        question = attempt.question
        answer = extract_answer(parsed.corrected_solution, question.task, question.choices).answer
        if answer is None:
            drops.append(Drop(stage=STAGE, reason="no_final_answer", record_id=correction_id))
            continue
        correction = Correction(
            id=correction_id,
            path_id=attempt.path.id,
            question_id=question.id,
            incorrect_step=parsed.incorrect_step,
            explanation=parsed.explanation,
            corrected_solution=parsed.corrected_solution,
            answer=answer,
            corrector_model=backend.model,
            prompt_version=version,
        )
        corrected.append(CorrectedAttempt(question=question, path=attempt.path, correction=correction))
    return corrected, drops
