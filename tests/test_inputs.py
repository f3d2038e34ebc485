from __future__ import annotations

import json
from pathlib import Path

import pytest

from lema.inputs import InputError, load_questions


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_real_gsm8k_test_lines_load_with_gold_and_step_solutions(gsm8k_test_file: Path) -> None:
    questions = load_questions(gsm8k_test_file)
    assert len(questions) == 300  # the shipped subset: GSM8K test lines 1-300
    first = questions[0]
    assert first.task == "gsm8k"
    assert first.gold == "18"  # Janet's ducks
    assert first.source == "gsm8k_test.jsonl:1"
    assert first.reference_solution is not None
    assert first.reference_solution.startswith("Step 1:")
    assert first.reference_solution.endswith("The answer is 18.")
    assert "<<" not in first.reference_solution


def test_limit(gsm8k_test_file: Path) -> None:
    assert len(load_questions(gsm8k_test_file, limit=5)) == 5


def test_math_lema_and_mcq_formats(tmp_path: Path) -> None:
    math = write_jsonl(
        tmp_path / "m.jsonl", [{"problem": "Compute $1/2+1/3$.", "solution": r"So $\boxed{\frac{5}{6}}$."}]
    )
    (question,) = load_questions(math)
    assert (question.task, question.gold) == ("math", r"\frac{5}{6}")

    lema = write_jsonl(
        tmp_path / "l.jsonl", [{"prompt": "What is 2+2?", "completion": "Step 1: 2+2=4.\nThe answer is 4."}]
    )
    (question,) = load_questions(lema)
    assert (question.task, question.gold) == ("gsm8k", "4")

    mcq = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"question": "Largest?", "choices": ["1", "3", "2"], "answer": "B"},
            {"question": "Smallest?", "choices": ["1", "3", "2"], "answer": "1"},
            {
                "question": {
                    "stem": "Where do fish live?",
                    "choices": [{"label": "A", "text": "sky"}, {"label": "B", "text": "water"}],
                },
                "answerKey": "B",
            },
        ],
    )
    golds = [(q.gold, q.choices) for q in load_questions(mcq)]
    assert golds == [("B", ("1", "3", "2")), ("A", ("1", "3", "2")), ("B", ("sky", "water"))]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "q", "answer": "#### 3"}\n{not json\n', r"bad\.jsonl:2: invalid JSON"),
        ('{"question": "q"}\n', r"bad\.jsonl:1: cannot tell the format"),
        ('{"question": "q", "answer": "no number here"}\n', r"bad\.jsonl:1: field 'answer': no gold answer"),
        ('{"question": "q", "answer": "2+2 is four"}\n', r"bad\.jsonl:1: .*ends with '#### <number>'"),
        ('{"question": "q", "answer": "18"}\n', r"bad\.jsonl:1: .*ends with '#### <number>'"),
        ('{"question": "q", "answer": "so #### four"}\n', r"bad\.jsonl:1: .*after '####' is not a number"),
        ('{"problem": "p", "solution": "no box"}\n', r"bad\.jsonl:1: field 'solution': no gold answer"),
        ('{"question": "", "answer": "#### 1"}\n', r"bad\.jsonl:1: field 'question' is missing"),
        ("[1, 2]\n", r"bad\.jsonl:1: expected a JSON object"),
        ('{"question": "q", "choices": ["a", "b"], "answer": "E"}\n', r"bad\.jsonl:1: field 'answer'"),
        ("\n\n", r"bad\.jsonl: no questions"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(InputError, match=message):
        load_questions(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_questions(tmp_path / "nope.jsonl")
