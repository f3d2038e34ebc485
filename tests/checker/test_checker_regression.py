"""The regression table: hand-written (response, gold) pairs across the three tasks, each with its verdict.

Every case names the failure class it pins, so a change that breaks one says which promise it broke. The classes
include those reported against Math-Verify and other graders (two boxes, tiny values, bare equations, a letter
picked out of a boxed expression, percent, leading zeros, thousands separators).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from lema.checker import Checker
from lema.records import Task


@dataclass(frozen=True)
class Case:
    kind: str
    task: Task
    response: str
    gold: str
    correct: bool
    reason: str | None = None
    choices: tuple[str, ...] = ()


GSM8K = [
    Case("answer_is", "gsm8k", "She sells 9 eggs at $2 each. The answer is 18.", "18", True, "numeric_equal"),
    Case("answer_is", "gsm8k", "The answer is 18", "18", True),
    Case("answer_is", "gsm8k", "The final answer is 18.", "18", True),
    Case("answer_is", "gsm8k", "The answer is: 18", "18", True),
    Case("answer_is", "gsm8k", "The answer is **18**.", "18", True),
    Case("answer_is", "gsm8k", "The answer is 17.", "18", False, "numeric_mismatch"),
    Case("hash_marks", "gsm8k", "9 * 2 = <<9*2=18>>18\n#### 18", "18", True),
    Case("hash_marks", "gsm8k", "#### 19", "18", False, "numeric_mismatch"),
    Case("answer_colon", "gsm8k", "Answer: 18", "18", True),
    Case("answer_colon", "gsm8k", "**Answer:** 18", "18", True),
    Case("answer_colon", "gsm8k", "Answer: the total is 18 eggs.", "18", True),
    Case("boxed", "gsm8k", "So she makes \\boxed{18} dollars.", "18", True),
    Case("currency", "gsm8k", "The answer is $1,234.50.", "1234.5", True),
    Case("currency", "gsm8k", "The answer is $1,234.50.", "1234.51", False),
    Case("currency", "gsm8k", "The answer is \\$18.", "18", True),
    Case("currency", "gsm8k", "The answer is $18. She also tips $5.", "18", True),
    Case("currency", "gsm8k", "The answer is -$5.", "-5", True),
    Case("currency", "gsm8k", "The answer is $-5.", "-5", True),
    Case("units", "gsm8k", "The answer is 18 dollars.", "18", True),
    Case("units", "gsm8k", "The answer is 18 cm.", "18", True),
    Case("units", "gsm8k", "The answer is 18 apples, 3 more than Tom.", "18", True),
    Case("units", "gsm8k", "The answer is 240 minutes", "4", False),
    Case("percent", "gsm8k", "The answer is 18%.", "18", False, "percent_mismatch"),
    Case("percent", "gsm8k", "The answer is 18 percent.", "18", False, "percent_mismatch"),
    Case("percent", "gsm8k", "The answer is 50%.", "0.5", True, "numeric_equal"),
    Case("percent", "gsm8k", "The answer is 25%.", "25%", True),
    Case("negative", "gsm8k", "The answer is -3.", "-3", True),
    Case("negative", "gsm8k", "The answer is −3.", "-3", True),
    Case("negative", "gsm8k", "The answer is 3.", "-3", False),
    Case("decimal", "gsm8k", "The answer is 2.50.", "2.5", True),
    Case("decimal", "gsm8k", "The answer is 18.00", "18", True),
    Case("decimal", "gsm8k", "The answer is 72.0", "72", True),
    Case("decimal", "gsm8k", "The answer is 72.01", "72", False),
    Case("decimal", "gsm8k", "The answer is .5", "0.5", True),
    Case("decimal", "gsm8k", "The answer is 0.333", "1/3", False),
    Case("fraction", "gsm8k", "The answer is 3/4.", "0.75", True),
    Case("fraction", "gsm8k", "The answer is 0.5.", "1/2", True),
    Case("fraction", "gsm8k", "The answer is 1/2 of the pie.", "0.5", True),
    Case("fraction", "gsm8k", "The answer is 1/2.", "2", False),
    Case("fraction", "gsm8k", "The answer is \\frac{3}{4}.", "0.75", True),
    Case("equation", "gsm8k", "The answer is x = 5.", "5", True),
    Case("equation", "gsm8k", "The answer is 5 + 13 = 18.", "18", True),
    Case("equation", "gsm8k", "The answer is 5 + 13 = 18.", "5", False),
    Case("punctuation", "gsm8k", "The answer is 18!", "18", True),
    Case("punctuation", "gsm8k", "The answer is 18. Then 20 more arrive tomorrow.", "18", True),
    Case("leading_zeros", "gsm8k", "The answer is 016.", "16", True),
    Case("leading_zeros", "gsm8k", "The answer is 16.", "016", True),
    Case("leading_zeros", "gsm8k", "The answer is 007", "7", True),
    Case("leading_zeros", "gsm8k", "The answer is 0160", "16", False),
    Case("thousands", "gsm8k", "The answer is 1,000,000.", "1000000", True),
    Case("thousands", "gsm8k", "The answer is 1000000.", "1,000,000", True),
    Case("thousands", "gsm8k", "The answer is 100,000.", "1,000,000", False),
    Case("thousands", "gsm8k", "The answer is 10,000", "10000", True),
    Case("thousands", "gsm8k", "The answer is 4,5", "45", False),
    Case("last_marker", "gsm8k", "The answer is 17. Let me recheck: 9 * 2 = 18. The answer is 18.", "18", True),
    Case("last_marker", "gsm8k", "The answer is 18. Wait, that is wrong. The answer is 19.", "18", False),
    Case("last_number", "gsm8k", "She has 3 apples, buys 5, so 8", "8", True),
    Case("last_number", "gsm8k", "She has 3 apples, buys 5, so 8", "3", False),
    Case("no_answer", "gsm8k", "I do not know how to solve this.", "18", False, "no_answer"),
    Case("no_answer", "gsm8k", "", "18", False, "no_answer"),
    Case("not_a_number", "gsm8k", "The answer is five.", "5", False, "not_a_number"),
    Case("gold_solution", "gsm8k", "The answer is 72.", "48/2 = <<48/2=24>>24\n24+48 = <<24+48=72>>72\n#### 72", True),
    Case("gold_solution", "gsm8k", "The answer is 70.", "He sold 72 clips.\n#### 72", False),
    Case("gold_solution", "gsm8k", "The answer is 1450000.", "#### 1,450,000", True),
]

MATH = [
    Case("boxed", "math", "So $x = \\boxed{\\frac{1}{2}}$.", "\\frac12", True, "numeric_equal"),
    Case("boxed", "math", "\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True, "symbolic_equal"),
    Case("boxed", "math", "\\boxed{\\left(\\frac{1}{2}\\right)}", "\\frac12", True),
    Case("boxed", "math", "\\boxed{{{3}}}", "3", True),
    Case("boxed", "math", "\\fbox{7}", "7", True),
    Case("answer_is", "math", "The answer is $\\frac{1}{2}$.", "\\frac{1}{2}", True),
    Case("answer_is", "math", "Final Answer: The final answer is $\\frac{3}{5}$. I hope it is correct.", "0.6", True),
    Case("answer_is", "math", "The answer is $\\frac{3}{5}$.", "\\frac{2}{5}", False, "numeric_mismatch"),
    Case("frac", "math", "\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    Case("frac", "math", "\\boxed{\\tfrac{3}{4}}", "0.75", True),
    Case("frac", "math", "\\boxed{\\frac34}", "\\frac{3}{4}", True),
    Case("frac", "math", "\\boxed{-\\frac{1}{2}}", "-0.5", True),
    Case("frac", "math", "\\boxed{\\frac{-1}{2}}", "-\\frac{1}{2}", True),
    Case("frac", "math", "\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
    Case("frac", "math", "\\boxed{\\frac{a+b}{c}}", "\\frac{b+a}{c}", True, "symbolic_equal"),
    Case("sqrt", "math", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True, "symbolic_equal"),
    Case("sqrt", "math", "\\boxed{\\sqrt{2}}", "\\sqrt{3}", False, "symbolic_mismatch"),
    Case("sqrt", "math", "\\boxed{\\sqrt{3}}", "1.732", False),
    Case("sqrt", "math", "\\boxed{3\\sqrt{2}}", "\\sqrt{18}", True),
    Case("pi", "math", "\\boxed{2\\pi}", "2\\pi", True),
    Case("pi", "math", "\\boxed{\\pi}", "2\\pi", False),
    Case("pi", "math", "\\boxed{\\frac{\\pi}{4}}", "\\frac{1}{4}\\pi", True),
    Case("pi", "math", "\\boxed{3.14}", "\\pi", False),
    Case("interval", "math", "\\boxed{(1, 2]}", "(1,2]", True),
    Case("interval", "math", "\\boxed{[1, 2]}", "(1,2]", False),
    Case("interval", "math", "\\boxed{(1, 2]}", "(1, 3]", False, "numeric_mismatch"),
    Case("interval", "math", "\\boxed{[0.5, 1)}", "[\\frac12, 1)", True, "numeric_equal"),
    Case("interval", "math", "\\boxed{(1, 2)}", "[1, 2]", False, "symbolic_mismatch"),
    Case("interval", "math", "\\boxed{(-\\infty, 3)}", "(-\\infty,3)", True),
    Case("interval", "math", "\\boxed{(-\\infty,2)\\cup(3,\\infty)}", "(-\\infty, 2) \\cup (3, \\infty)", True),
    Case("interval", "math", "\\boxed{(-\\infty,2]\\cup(3,\\infty)}", "(-\\infty, 2) \\cup (3, \\infty)", False),
    Case("set", "math", "\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", True),
    Case("set", "math", "\\boxed{\\{1,2\\}}", "\\{1,2,3\\}", False),
    Case("set", "math", "\\boxed{1, 2, 3}", "3, 2, 1", True),
    Case("set", "math", "\\boxed{\\{1, 2, 2\\}}", "\\{2, 1\\}", True, "numeric_equal"),
    Case("set", "math", "\\boxed{1, 2}", "\\{2, 1\\}", True, "numeric_equal"),
    Case("set", "math", "\\boxed{\\{1, 2\\}}", "\\{1, 2.5\\}", False, "numeric_mismatch"),
    Case("tuple", "math", "\\boxed{(1,2)}", "(1, 2)", True),
    Case("tuple", "math", "\\boxed{(1, -2, 3)}", "(1,-2,3)", True),
    Case("tuple", "math", "\\boxed{(2,1)}", "(1,2)", False),
    Case("tuple", "math", "\\boxed{(1,2,3)}", "(1,2,4)", False),
    Case("tuple", "math", "\\boxed{(3, -1.0)}", "(3,-1)", True, "numeric_equal"),
    Case("tuple", "math", "\\boxed{\\left( 2, \\frac{1}{2} \\right)}", "(2, 0.5)", True, "numeric_equal"),
    Case("tuple", "math", "\\boxed{(1,2,3)}", "(1,2)", False, "numeric_mismatch"),
    Case("tuple", "math", "\\boxed{(1, 100)}", "(1,100)", True),
    Case("tuple", "math", "\\boxed{(1, 2)}", "1, 2", True),
    Case(
        "matrix",
        "math",
        "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
        "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}",
        True,
    ),
    Case(
        "matrix",
        "math",
        "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}}",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        False,
    ),
    Case(
        "matrix",
        "math",
        "\\boxed{\\begin{pmatrix} 2 \\\\ -1 \\end{pmatrix}}",
        "\\begin{pmatrix}2\\\\-1\\end{pmatrix}",
        True,
    ),
    Case("degrees", "math", "\\boxed{30^\\circ}", "30", True),
    Case("degrees", "math", "\\boxed{30^{\\circ}}", "30^\\circ", True),
    Case("degrees", "math", "\\boxed{45^\\circ}", "30", False),
    Case("thousands", "math", "\\boxed{10{,}000}", "10000", True, "numeric_equal"),
    Case("thousands", "math", "\\boxed{10,000}", "10000", True),
    Case("thousands", "math", "\\boxed{10\\,000}", "10000", True),
    Case("thousands", "math", "\\boxed{1{,}000}", "10000", False),
    Case("leading_zeros", "math", "\\boxed{016}", "16", True),
    Case("leading_zeros", "math", "\\boxed{16}", "016", True),
    Case("text", "math", "\\boxed{\\text{Monday}}", "\\text{Monday}", True, "string_equal"),
    Case("text", "math", "\\boxed{\\text{Tuesday}}", "\\text{Monday}", False),
    Case("text", "math", "\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    Case("text", "math", "\\boxed{\\textbf{odd}}", "\\text{odd}", True),
    Case("text", "math", "\\boxed{\\text{odd}}", "\\text{even}", False),
    Case("equation", "math", "\\boxed{y=2x+1}", "y=2x+1", True),
    Case("equation", "math", "\\boxed{y = 1 + 2x}", "y=2x+1", True, "symbolic_equal"),
    Case("equation", "math", "\\boxed{y=3x+1}", "y=2x+1", False),
    Case("equation", "math", "\\boxed{x=5}", "5", True),
    Case("bare_equation", "math", "The answer is 3x + 4y + 14 = 0.", "3x-y+13=0", False),
    Case("bare_equation", "math", "The answer is x - y = 1.", "x+y=3", False),
    Case("bare_equation", "math", "The answer is 6x - 2y + 26 = 0.", "3x-y+13=0", True),
    Case("units", "math", "\\boxed{5\\text{ cm}}", "5", True),
    Case("units", "math", "\\boxed{10\\sqrt{2}\\text{ cm}}", "10\\sqrt2", True),
    Case("units", "math", "\\boxed{5\\text{ cm}}", "6", False),
    Case("units", "math", "\\boxed{12\\text{ inches}}", "12", True),
    Case("percent", "math", "\\boxed{50\\%}", "50", True, "numeric_equal"),  # MATH graders drop the sign
    Case("percent", "math", "\\boxed{51\\%}", "50", False, "numeric_mismatch"),
    Case("percent", "math", "\\boxed{50\\%}", "50\\%", True),
    Case("percent", "math", "\\boxed{50\\%}", "\\frac{1}{2}", True),
    Case("tiny_values", "math", "\\boxed{\\frac{1}{2^{99}}}", "\\frac{1}{2^{98}}", False, "symbolic_mismatch"),
    Case("tiny_values", "math", "\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2006!}", False, "symbolic_mismatch"),
    Case("tiny_values", "math", "\\boxed{2^{-99}}", "\\frac{1}{2^{99}}", True, "symbolic_equal"),
    Case("tiny_values", "math", "\\boxed{0.0000001}", "0.0000002", False),
    Case(
        "tiny_values",
        "math",
        "\\boxed{\\frac{1}{3 \\cdot 2^{2006}}}",
        "\\frac{2^{2005}+1}{3 \\cdot 2^{2006}}",
        False,
        "symbolic_mismatch",
    ),
    Case("two_boxes", "math", "First \\boxed{2}. Wait, that is wrong: \\boxed{3}.", "2", False),
    Case("two_boxes", "math", "First \\boxed{2}. Wait, that is wrong: \\boxed{3}.", "3", True),
    Case("two_boxes", "math", "It is \\boxed{1} or \\boxed{2}.", "1", False),
    Case("two_boxes", "math", "It is \\boxed{1} or \\boxed{2}.", "2", False),
    Case("two_boxes", "math", "So $x = \\boxed{1}$ and $x = \\boxed{2}$.", "1, 2", True),
    Case("unclosed_box", "math", "\\boxed{5} and then \\boxed{6", "5", False, "unclosed_boxed"),
    Case("expression", "math", "\\boxed{x^2+2x+1}", "(x+1)^2", True, "symbolic_equal"),
    Case("expression", "math", "\\boxed{x^2+1}", "(x+1)^2", False),
    Case("complex", "math", "\\boxed{1+i}", "i+1", True),
    Case("complex", "math", "\\boxed{1-i}", "1+i", False),
    Case("gold_solution", "math", "\\boxed{4}", "We get $2+2=\\boxed{4}$.", True),
    Case("gold_solution", "math", "\\boxed{5}", "We get $2+2=\\boxed{4}$.", False),
    Case("bare", "math", "$\\frac{1}{2}$", "0.5", True),
    Case("no_answer", "math", "Let us think step by step.\nWe cannot finish.", "1", False, "no_answer"),
]

LABELLED = ("(A) 12", "(B) 15", "(C) 18", "(D) 21")
CSQA = ("bank", "library", "department store", "mall", "new york")
MCQ = [
    Case("letter", "mcq", "The answer is (C).", "C", True, "choice_equal"),
    Case("letter", "mcq", "The answer is C.", "C", True),
    Case("letter", "mcq", "The answer is (c).", "C", True),
    Case("letter", "mcq", "The answer is C: 18.", "C", True),
    Case("letter", "mcq", "The answer is (B).", "C", False, "choice_mismatch"),
    Case("letter", "mcq", "C) 18", "C", True),
    Case("letter", "mcq", "(C)", "C", True),
    Case("letter", "mcq", "C", "C", True),
    Case("letter", "mcq", "Answer: C", "C", True),
    Case("letter", "mcq", "Answer: (D)", "C", False),
    Case("letter", "mcq", "\\boxed{C}", "C", True),
    Case("letter", "mcq", "\\boxed{\\text{C}}", "C", True),
    Case("letter", "mcq", "\\boxed{(C)}", "(C)", True),
    Case("letter", "mcq", "I think the answer is B.", "B", True),
    Case("letter", "mcq", "The answer is B. Actually, the answer is D.", "D", True),
    Case("letter", "mcq", "The answer is B because 15 is odd.", "B", True),
    Case("letter", "mcq", "The answer is A because 12 is even.", "A", True),
    Case("letter", "mcq", "The answer is A, which is 12.", "A", True),
    Case("letter", "mcq", "The correct option is C", "C", True),
    Case("letter", "mcq", "The answer is E.", "A", False, choices=LABELLED),
    Case("boxed_expression", "mcq", "\\boxed{2A+B}", "A", False),
    Case("boxed_expression", "mcq", "\\boxed{2A+B}", "B", False),
    Case("boxed_expression", "mcq", "\\boxed{A+B}", "A", False),
    Case("boxed_expression", "mcq", "\\boxed{2A+B}", "C", True, choices=("A+B", "2A", "2A+B", "A")),
    Case("choice_text", "mcq", "The answer is 15.", "B", True, choices=LABELLED),
    Case("choice_text", "mcq", "The answer is 15.0", "B", True, choices=LABELLED),
    Case("choice_text", "mcq", "The answer is 16.", "B", False, choices=LABELLED),
    Case("choice_text", "mcq", "The answer is (B) 15.", "B", True, choices=LABELLED),
    Case("choice_text", "mcq", "The answer is B) 15", "15", True, choices=LABELLED),
    Case("csqa", "mcq", "People keep money in a bank. The answer is bank.", "bank", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is a bank.", "bank", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is (A) bank.", "bank", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is A.", "bank", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is library.", "bank", False, choices=CSQA),
    Case("csqa", "mcq", "The answer is Department Store!", "department store", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is department store.", "C", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is New York.", "E", True, choices=CSQA),
    Case("csqa", "mcq", "The answer is a bank or a mall.", "bank", False, choices=CSQA),
    Case("csqa", "mcq", "The answer is bank.", "bank", True),
    Case("no_answer", "mcq", "Let me think about each option in turn.\nThey all seem plausible.", "A", False),
]

CASES = GSM8K + MATH + MCQ


def test_the_table_is_large_and_covers_every_class() -> None:
    kinds = Counter(case.kind for case in CASES)
    assert len(CASES) >= 150
    for required in (
        "two_boxes",
        "tiny_values",
        "bare_equation",
        "boxed_expression",
        "percent",
        "leading_zeros",
        "thousands",
        "interval",
        "set",
        "tuple",
        "matrix",
        "degrees",
        "text",
        "equation",
        "units",
        "csqa",
    ):
        assert kinds[required] >= 2, required


@pytest.mark.parametrize("case", CASES, ids=[f"{c.task}-{c.kind}-{i}" for i, c in enumerate(CASES)])
def test_case(case: Case, checker: Checker) -> None:
    result = checker.check(case.response, case.gold, case.task, case.choices)
    assert result.correct is case.correct, result
    if case.reason is not None:
        assert result.reason == case.reason, result


def test_a_batch_gives_the_same_verdicts_in_input_order(checker: Checker) -> None:
    from lema.checker import CheckItem

    items = [CheckItem(c.response, c.gold, c.task, c.choices) for c in CASES]
    results = checker.check_batch(items)
    assert [r.correct for r in results] == [c.correct for c in CASES]
