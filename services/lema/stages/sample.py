"""Sample: chain-of-thought solutions to questions from one sampler LLM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lema.checker import extract_answer
from lema.config import SampleSettings
from lema.llm.base import GenerationRequest, LLMBackend
from lema.prompts import format_choices, load_prompt
from lema.records import Attempt, GenerationParams, Question, ReasoningPath, stable_id


def derive_seed(record_id: str) -> int:
    """A per-record seed, so each completion depends only on its own record, never on batch composition."""
    return int(stable_id("s", record_id)[2:10], 16) & 0x7FFF_FFFF


def seeded(params: GenerationParams, record_id: str) -> GenerationParams:
    return params.model_copy(update={"seed": derive_seed(f"{params.seed}:{record_id}")})


def sample_questions(
    questions: Sequence[Question],
    backend: LLMBackend,
    settings: SampleSettings,
    prompts_dir: Path | None = None,
) -> list[Attempt]:
    """`settings.samples_per_model` paths per question, with extracted answers (not yet checked)."""
    requests: list[GenerationRequest] = []
    stubs: list[tuple[Question, ReasoningPath]] = []
    for question in questions:
        prompt = load_prompt("sample", question.task, prompts_dir)
        messages = prompt.render(question=question.text, choices=format_choices(question.choices))
        for index in range(settings.samples_per_model):
            path_id = ReasoningPath.make_id(question.id, backend.model, index, prompt.version_tag, settings.params)
            requests.append(GenerationRequest(messages, seeded(settings.params, path_id)))
            stub = ReasoningPath(
                id=path_id,
                question_id=question.id,
                model=backend.model,
                sample_index=index,
                prompt_version=prompt.version_tag,
                text="",
            )
            stubs.append((question, stub))
    completions = backend.generate(requests) if requests else []
    attempts = []
    for (question, stub), (completion, *_) in zip(stubs, completions, strict=True):
        text = completion.text.strip()
        answer = extract_answer(text, question.task, question.choices).answer
        attempts.append(Attempt(question=question, path=stub.model_copy(update={"text": text, "answer": answer})))
    return attempts
