from __future__ import annotations

import pytest

from lema.stages.correction_parser import ParsedCorrection, ParseFailure, parse_correction

WRONG = "Step 1: 3 + 8 = 11.\nStep 2: 11 - 5 = 6.\nThe answer is 6."


@pytest.mark.parametrize(
    "output",
    [
        "Incorrect Step: Step 1\nExplanation: should multiply.\nCorrect Solution:\nStep 1: 3 * 8 = 24.\n"
        "The answer is 19.",
        "incorrect step: step 1\nexplanation: should multiply.\ncorrected solution:\nStep 1: 3 * 8 = 24.\n"
        "The answer is 19.",
        "**Incorrect Step:** Step 1\n**Explanation:** should multiply.\n**Correct Solution:**\nStep 1: 3 * 8 = 24.\n"
        "The answer is 19.",
        "### Incorrect step: 1\n### Explanation\nshould multiply.\n### Correct solution\nStep 1: 3 * 8 = 24.\n"
        "The answer is 19.",
        "  Incorrect   Step :  Step1\n Explanation - should multiply.\nCorrection solution: Step 1: 3 * 8 = 24. "
        "The answer is 19.",
        "- Incorrect Step: (Step 1)\n- Explanation: should multiply.\n- Correct Solution: Step 1: 3 * 8 = 24. "
        "The answer is 19.",
    ],
)
def test_tolerant_parsing(output: str) -> None:
    parsed = parse_correction(output, WRONG)
    assert isinstance(parsed, ParsedCorrection), parsed
    assert parsed.incorrect_step == 1
    assert parsed.explanation == "should multiply."
    assert parsed.corrected_solution.startswith("Step 1: 3 * 8 = 24.")
    assert parsed.corrected_solution.endswith("The answer is 19.")


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("", "empty_output"),
        ("   \n **  ", "empty_output"),
        ("The answer is 19.", "missing_incorrect_step"),
        ("Incorrect Step: Step 1\nCorrect Solution: x", "missing_explanation"),
        ("Incorrect Step: Step 1\nExplanation: y", "missing_corrected_solution"),
        ("Incorrect Step: none\nExplanation: y\nCorrect Solution: z", "missing_incorrect_step"),
        ("Incorrect Step: Step 1\nExplanation:\nCorrect Solution: z", "missing_explanation"),
        ("Incorrect Step: Step 1\nExplanation: y\nCorrect Solution:   ", "missing_corrected_solution"),
        ("Explanation: y\nIncorrect Step: Step 1\nCorrect Solution: z", "parts_out_of_order"),
        ("Incorrect Step: Step 7\nExplanation: y\nCorrect Solution: z", "incorrect_step_out_of_range"),
        ("Incorrect Step: Step 0\nExplanation: y\nCorrect Solution: z", "incorrect_step_out_of_range"),
    ],
)
def test_failures_have_reasons(output: str, reason: str) -> None:
    assert parse_correction(output, WRONG) == ParseFailure(reason)


def test_step_bound_is_not_applied_when_the_wrong_solution_has_no_numbered_steps() -> None:
    parsed = parse_correction("Incorrect Step: Step 4\nExplanation: y\nCorrect Solution: z", "free text")
    assert isinstance(parsed, ParsedCorrection)
