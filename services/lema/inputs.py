"""Load questions from GSM8K, MATH, LEMA and multiple-choice JSONL files (or a Hugging Face dataset when online).

Everything is validated before the first LLM call: invalid JSON, a missing field, a gold answer that cannot be
extracted or an empty file is an `InputError` naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from lema.checker import extract_answer, extract_gold
from lema.checker.numbers import parse_number
from lema.records import Question, Task

Format = Literal["auto", "gsm8k", "math", "lema", "mcq"]
TASK_OF_FORMAT: dict[str, Task] = {"gsm8k": "gsm8k", "math": "math", "lema": "gsm8k", "mcq": "mcq"}
_CALCULATOR = re.compile(r"<<[^>]*>>")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def is_numeric_answer(answer: str) -> bool:
    """GSM8K-style answers are numbers: '18', '-3', '22.5', '3/4', '$1,200' all qualify (the checker decides)."""
    return parse_number(extract_gold(answer, "gsm8k") or "") is not None


class InputError(ValueError):
    """Bad input; the message starts with `file:line:`."""


def detect_format(row: Mapping[str, Any]) -> Format:
    if "choices" in row or "answerKey" in row:
        return "mcq"
    if "problem" in row and "solution" in row:
        return "math"
    if "prompt" in row and "completion" in row:
        return "lema"
    if "question" in row and "answer" in row:
        return "gsm8k"
    raise ValueError(
        f"cannot tell the format from fields {sorted(row)}; expected question+answer (gsm8k), "
        "problem+solution (math), prompt+completion (lema) or question+choices+answer (mcq)"
    )


def _text(row: Mapping[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {field!r} is missing or not a non-empty string")
    return value.strip()


def gsm8k_steps(solution: str, answer: str) -> str:
    """A GSM8K reference solution in the project's CoT format: numbered steps, calculator notes removed."""
    body = solution.split("####", maxsplit=1)[0]
    lines = [_CALCULATOR.sub("", line).strip() for line in body.splitlines()]
    steps = [f"Step {i}: {line}" for i, line in enumerate((line for line in lines if line), start=1)]
    return "\n".join([*steps, f"The answer is {answer}."])


def _mcq_choices(row: Mapping[str, Any]) -> tuple[str, ...]:
    raw = row.get("choices")
    if isinstance(row.get("question"), Mapping):  # CommonsenseQA: {"question": {"stem", "choices": [...]}}
        raw = row["question"].get("choices")
    if isinstance(raw, Mapping) and "text" in raw:  # Hugging Face style: {"label": [...], "text": [...]}
        raw = list(raw["text"])
    if not isinstance(raw, list) or len(raw) < 2:
        raise ValueError("field 'choices' must list at least two options")
    texts = [c.get("text") if isinstance(c, Mapping) else c for c in raw]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("field 'choices' has an empty or non-text option")
    return tuple(str(t).strip() for t in texts)


def _mcq_gold(row: Mapping[str, Any], choices: tuple[str, ...]) -> str:
    answer = row.get("answer", row.get("answerKey"))
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return _LETTERS[answer]
    if isinstance(answer, str):
        answer = answer.strip()
        letter = answer.strip("()").upper()
        if len(letter) == 1 and letter in _LETTERS[: len(choices)]:
            return letter
        for i, choice in enumerate(choices):
            if answer.casefold() == choice.casefold():
                return _LETTERS[i]
    raise ValueError(f"field 'answer' ({answer!r}) is not a choice letter, index or choice text")


def question_from_row(row: Mapping[str, Any], fmt: Format, task: Task | None, source: str) -> Question:
    """One input row as a Question; raises ValueError saying which field is wrong."""
    if fmt == "auto":
        fmt = detect_format(row)
    task = task or TASK_OF_FORMAT[fmt]
    if fmt == "gsm8k":
        text, solution = _text(row, "question"), _text(row, "answer")
        if "####" not in solution:  # never guess a gold from prose: "2+2 is four" is not a gold of 2
            raise ValueError("field 'answer': no gold answer (a GSM8K answer ends with '#### <number>')")
        gold = extract_gold(solution, task)
        if gold is None or (task == "gsm8k" and not is_numeric_answer(gold)):
            raise ValueError("field 'answer': no gold answer (the text after '####' is not a number)")
        return Question.create(text, gold, task, source, reference_solution=gsm8k_steps(solution, gold))
    if fmt == "math":
        text, solution = _text(row, "problem"), _text(row, "solution")
        gold = extract_gold(solution, task) if "\\boxed" in solution or "\\fbox" in solution else None
        if gold is None:
            raise ValueError(r"field 'solution': no gold answer (expected a final \boxed{...})")
        return Question.create(text, gold, task, source, reference_solution=solution)
    if fmt == "lema":
        text, completion = _text(row, "prompt"), _text(row, "completion")
        extracted = extract_answer(completion, task)
        if extracted.answer is None:
            raise ValueError("field 'completion': no final answer (expected 'The answer is ...')")
        return Question.create(text, extracted.answer, task, source, reference_solution=completion)
    question = row.get("question")
    stem = question.get("stem") if isinstance(question, Mapping) else question
    if not isinstance(stem, str) or not stem.strip():
        raise ValueError("field 'question' is missing or empty")
    choices = _mcq_choices(row)
    return Question.create(stem.strip(), _mcq_gold(row, choices), "mcq", source, choices=choices)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _hf_rows(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """`hf://NAME[:CONFIG][@SPLIT]`, e.g. `hf://openai/gsm8k:main@test`; needs the `export` extra and a network."""
    from datasets import load_dataset

    name, _, split = spec.removeprefix("hf://").partition("@")
    name, _, config = name.partition(":")
    dataset = load_dataset(name, config or None, split=split or "train")
    for number, row in enumerate(dataset, start=1):
        yield number, dict(row)


def _unique(questions: Iterable[Question]) -> list[Question]:
    return list({q.id: q for q in questions}.values())


def load_questions(
    path: str | Path, format: Format = "auto", task: Task | None = None, limit: int | None = None
) -> list[Question]:
    """All questions of an input, validated; duplicates (same text and choices) are kept once."""
    spec = str(path)
    if spec.startswith("hf://"):
        rows: Iterable[tuple[int, dict[str, Any]]] = _hf_rows(spec)
    else:
        file = Path(spec)
        if not file.is_file():
            raise InputError(f"{file}: input file not found")
        rows = _jsonl_rows(file)
    questions: list[Question] = []
    for number, row in rows:
        source = f"{Path(spec).name}:{number}"
        try:
            questions.append(question_from_row(row, format, task, source))
        except ValueError as exc:
            raise InputError(f"{spec}:{number}: {exc}") from None
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise InputError(f"{spec}: no questions (the file is empty)")
    return _unique(questions)
