"""One prompt format: a CoT example is trained on exactly the tokens that `lema eval` and the sampler prompt with."""

from __future__ import annotations

from pathlib import Path

import pytest

from lema.config import LLMSettings
from lema.llm.base import GenerationRequest
from lema.llm.transformers_backend import TransformersBackend
from lema.prompts import format_choices, load_prompt
from lema.records import GenerationParams, Question
from lema.stages.dataset import question_input
from lema.training.data import TextPair, render_example, training_messages

QUESTIONS = [
    Question.create("Tom has 3 apples and buys 4 more. How many apples does he have?", "7", "gsm8k", "t.jsonl"),
    Question.create("What is $2^{10}$?", "1024", "math", "t.jsonl"),
    Question.create("Which number is even?", "B", "mcq", "t.jsonl", choices=("3", "4", "5")),
]


def _sampler_messages(question: Question) -> tuple[object, ...]:
    """What the sampler (stages/sample.py) and `lema eval` (training/evaluate.py) send for a question."""
    return load_prompt("sample", question.task).render(question=question.text, choices=format_choices(question.choices))


@pytest.mark.parametrize("question", QUESTIONS, ids=lambda q: q.task)
def test_a_cot_example_is_framed_as_the_sampler_and_eval_frame_its_question(question: Question) -> None:
    pair = TextPair("cot", question.task, question_input(question), "Step 1: ...\nThe answer is 7.")
    messages = training_messages(pair)
    assert messages == _sampler_messages(question)
    assert messages[0].role == "system" and messages[0].content, "the template's system prompt, not the model's"
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"], "with the one-shot example"


def test_a_correction_example_keeps_the_system_prompt_without_the_one_shot_solution() -> None:
    pair = TextPair("correction", "gsm8k", "Question: ...\n\nSolution:\nStep 1: ...", "Incorrect Step: Step 1 ...")
    system, user = training_messages(pair)
    assert system == _sampler_messages(QUESTIONS[0])[0]
    assert (user.role, user.content) == ("user", pair.input)


def test_training_tokens_are_the_tokens_eval_prompts_with(tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    backend = TransformersBackend(LLMSettings(backend="transformers", model=str(tiny_llama_dir)))  # unwrapped
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    try:
        for question in QUESTIONS:
            pair = TextPair("cot", question.task, question_input(question), "Step 1: 3 + 4 = 7.\nThe answer is 7.")
            prompt, target = render_example(tokenizer, pair)
            request = GenerationRequest(_sampler_messages(question), GenerationParams(temperature=0.0, max_tokens=8))
            assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == backend._prompt_ids(request)
            assert target.startswith(pair.output)
    finally:
        backend.close()
