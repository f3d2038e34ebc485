"""Answer extraction: which rule finds the final answer, gold from reference solutions, configured patterns."""

from __future__ import annotations

import pytest

from lema.checker import Checker, Extraction, extract_answer, extract_gold
from lema.checker.latex import Boxed, boxed_answer, normalize_latex, strip_math_delimiters
from lema.config import CheckerSettings
from lema.records import Task


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        ("So 9 * 2 = 18. The answer is 18.", "gsm8k", Extraction("18", "answer_is")),
        ("The answer is 17.\nNo wait. The answer is 18.", "gsm8k", Extraction("18", "answer_is")),
        ("The answer is $18$. \\boxed{19}", "gsm8k", Extraction("19", "boxed")),
        ("\\boxed{19}. So the answer is 18.", "gsm8k", Extraction("18", "answer_is")),
        ("work\n#### 1,450,000", "gsm8k", Extraction("1,450,000", "hash_marks")),
        ("Answer: 7 apples", "gsm8k", Extraction("7", "answer_colon")),
        ("3 and 4 make 7", "gsm8k", Extraction("7", "last_number")),
        ("no digits at all", "gsm8k", Extraction(None, "no_answer")),
        ("The answer is $\\frac{1}{2}$.", "math", Extraction("\\frac{1}{2}", "answer_is")),
        ("The answer is \\(x^2\\).", "math", Extraction("x^2", "answer_is")),
        ("The answer is $$\\sqrt{2}$$", "math", Extraction("\\sqrt{2}", "answer_is")),
        ("thus $\\boxed{\\frac{\\sqrt{3}}{2}}$", "math", Extraction("\\frac{\\sqrt{3}}{2}", "boxed")),
        ("\\boxed{\\{1, 2\\}}", "math", Extraction("\\{1, 2\\}", "boxed")),
        ("\\boxed {5}", "math", Extraction("5", "boxed")),
        ("\\boxed{4} is wrong, it is \\boxed{5", "math", Extraction(None, "unclosed_boxed")),
        ("$x = 3$", "math", Extraction("x = 3", "bare")),
        ("A long derivation.\nWith several lines but no final answer.", "math", Extraction(None, "no_answer")),
        ("The answer is (B).", "mcq", Extraction("B", "answer_is")),
        ("B", "mcq", Extraction("B", "bare")),
        ("It could be anything", "mcq", Extraction(None, "no_answer")),
    ],
)
def test_extract_answer_finds_the_final_answer_and_says_how(text: str, task: Task, expected: Extraction) -> None:
    assert extract_answer(text, task) == expected


def test_mcq_extraction_maps_choice_texts_to_letters() -> None:
    choices = ("bank", "library", "mall")
    assert extract_answer("The answer is library.", "mcq", choices) == Extraction("B", "answer_is")
    assert extract_answer("mall", "mcq", choices) == Extraction("C", "bare")
    assert extract_answer("The answer is a school.", "mcq", choices) == Extraction("a school", "answer_is")


@pytest.mark.parametrize(
    ("text", "task", "gold"),
    [
        ("18", "gsm8k", "18"),
        ("$1,234", "gsm8k", "1,234"),
        ("He has 3 + 4 = <<3+4=7>>7 pens.\n#### 7", "gsm8k", "7"),
        ("#### -3", "gsm8k", "-3"),
        ("\\frac{1}{2}", "math", "\\frac{1}{2}"),
        ("$\\frac{1}{2}$", "math", "\\frac{1}{2}"),
        ("So $x = \\boxed{\\frac{1}{2}}$ and we are done.", "math", "\\frac{1}{2}"),
        ("y = 2x + 1", "math", "y = 2x + 1"),
        ("C", "mcq", "C"),
        ("(C)", "mcq", "C"),
        ("department store", "mcq", "department store"),
        ("", "gsm8k", None),
        ("   ", "math", None),
    ],
)
def test_extract_gold_reads_bare_answers_and_reference_solutions(text: str, task: Task, gold: str | None) -> None:
    assert extract_gold(text, task) == gold


def test_extract_gold_is_idempotent() -> None:
    for text, task in [("#### 1,450,000", "gsm8k"), ("We get \\boxed{\\dfrac{3}{4}}.", "math"), ("(D)", "mcq")]:
        once = extract_gold(text, task)  # type: ignore[arg-type]
        assert once is not None
        assert extract_gold(once, task) == once  # type: ignore[arg-type]


def test_configured_patterns_find_answers_in_a_custom_format() -> None:
    text = "Reasoning ...\nFINAL => 42 <= done"
    assert extract_answer(text, "gsm8k").reason == "last_number"
    assert extract_answer(text, "gsm8k", patterns=[r"FINAL => (.+?) <="]) == Extraction("42", "pattern")
    with Checker(CheckerSettings(), patterns=[r"FINAL => (.+?) <="]) as checker:
        assert checker.check("FINAL => 42 <= then 7 more", "42", "gsm8k").correct


def test_an_invalid_pattern_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"answer pattern '\(unclosed': invalid regular expression"):
        Checker(CheckerSettings(), patterns=["(unclosed"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{1}", (0, "1", "boxed")),
        ("a \\boxed{\\frac{1}{\\sqrt{2}}} b", (2, "\\frac{1}{\\sqrt{2}}", "boxed")),
        ("\\boxed{1} then \\boxed{2}", (15, "2", "boxed")),
        ("\\boxed{1}, \\boxed{2}", (0, "1, 2", "boxed")),
        ("\\boxed{1} \\quad \\text{and} \\quad \\boxed{2}", (0, "1, 2", "boxed")),
        ("\\(y_1 = \\boxed{1}\\) and \\(y_2 = \\boxed{2}\\)", (8, "1, 2", "boxed")),
        ("\\boxed{3} so \\boxed{3}", (13, "3", "boxed")),
        ("$\\boxed{1}$ or $\\boxed{2}$", (1, None, "hedged")),
        ("\\boxed{7}, but it could also be \\boxed{8}", (32, None, "hedged")),
        ("\\boxed{\\{1\\}}", (0, "\\{1\\}", "boxed")),
        ("\\boxed{1", (0, None, "unclosed_boxed")),
        ("no box", None),
    ],
)
def test_boxed_answer(text: str, expected: tuple[int, str | None, str] | None) -> None:
    assert boxed_answer(text) == (Boxed(*expected) if expected else None)


def test_latex_normalization() -> None:
    assert strip_math_delimiters("\\( x \\)") == "x"
    assert strip_math_delimiters("$$x$$") == "x"
    assert strip_math_delimiters("\\$5") == "\\$5"
    assert normalize_latex("\\left( \\dfrac{1}{2}, 3 \\right)") == "(\\frac{1}{2},3)"
    assert normalize_latex("30^{\\circ}") == "30"
    assert normalize_latex("5\\,\\text{ cm}.") == "5"
    assert normalize_latex("\\textbf{Monday}") == "Monday"
