"""Parse a corrector's three labelled parts: incorrect step, explanation, corrected solution.

Tolerant of case, spacing, markdown decoration and label variants ("Corrected solution", "**Explanation**:"); an
output that cannot be parsed yields a `ParseFailure` with a reason that the run counts, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKDOWN = re.compile(r"(\*\*|__|`|^#+\s*|^>\s*)", re.MULTILINE)
_LABEL = r"^[ \t\-*]*{}\s*[:.\-]?"
_STEP_LABEL = re.compile(_LABEL.format(r"(?:the\s+)?(?:first\s+)?incorrect\s+step"), re.IGNORECASE | re.MULTILINE)
_EXPLANATION_LABEL = re.compile(_LABEL.format(r"(?:explanation|reason|why)"), re.IGNORECASE | re.MULTILINE)
_SOLUTION_LABEL = re.compile(_LABEL.format(r"correct(?:ed|ion)?\s+solution"), re.IGNORECASE | re.MULTILINE)
_STEP_NUMBER = re.compile(r"^\s*\(?(?:step\s*)?(\d+)\)?", re.IGNORECASE)
_STEP_LINE = re.compile(r"^\s*step\s*(\d+)\s*[:.]", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class ParsedCorrection:
    incorrect_step: int
    explanation: str
    corrected_solution: str


@dataclass(frozen=True)
class ParseFailure:
    reason: str


def count_steps(solution: str) -> int:
    return len(_STEP_LINE.findall(solution))


def parse_correction(output: str, wrong_solution: str = "") -> ParsedCorrection | ParseFailure:
    """Split a corrector output into its three parts; `wrong_solution` bounds the step number when it has steps."""
    text = _MARKDOWN.sub("", output).strip()
    if not text:
        return ParseFailure("empty_output")
    step_label = _STEP_LABEL.search(text)
    explanation_label = _EXPLANATION_LABEL.search(text)
    solution_label = _SOLUTION_LABEL.search(text)
    if step_label is None:
        return ParseFailure("missing_incorrect_step")
    if explanation_label is None:
        return ParseFailure("missing_explanation")
    if solution_label is None:
        return ParseFailure("missing_corrected_solution")
    if not step_label.start() < explanation_label.start() < solution_label.start():
        return ParseFailure("parts_out_of_order")
    number = _STEP_NUMBER.match(text[step_label.end() : explanation_label.start()])
    if number is None:
        return ParseFailure("missing_incorrect_step")
    step = int(number.group(1))
    explanation = text[explanation_label.end() : solution_label.start()].strip()
    corrected = text[solution_label.end() :].strip()
    if not explanation:
        return ParseFailure("missing_explanation")
    if not corrected:
        return ParseFailure("missing_corrected_solution")
    steps_in_wrong = count_steps(wrong_solution)
    if step < 1 or (steps_in_wrong and step > steps_in_wrong):
        return ParseFailure("incorrect_step_out_of_range")
    return ParsedCorrection(step, explanation, corrected)
