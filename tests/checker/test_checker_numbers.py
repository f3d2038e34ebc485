"""Numeric formats: property tests (same value in any format is equal, a different value is not) and the parser."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lema.checker import Checker, canonical_answer
from lema.checker.numbers import find_number, parse_number
from lema.config import CheckerSettings


def _with_separators(integer: int) -> str:
    return f"{integer:,}"


@st.composite
def decimal_spellings(draw: st.DrawFn) -> tuple[Fraction, str]:
    """A terminating decimal value and one of the ways a GSM8K or MATH answer may spell it."""
    cents = draw(st.integers(min_value=-(10**9), max_value=10**9))
    value = Fraction(cents, 100)
    sign = "-" if value < 0 else ""
    whole, hundredths = divmod(abs(cents), 100)
    digits = f"{hundredths:02d}".rstrip("0")
    grouped = draw(st.booleans()) and whole >= 1000
    integer_part = _with_separators(whole) if grouped else str(whole)
    if not grouped and draw(st.booleans()):
        integer_part = "0" * draw(st.integers(1, 2)) + integer_part  # leading zeros
    body = integer_part + ("." + digits + "0" * draw(st.integers(0, 2)) if digits else "")
    if not digits and draw(st.booleans()):
        body += "." + "0" * draw(st.integers(1, 3))
    form = draw(st.sampled_from(["plain", "dollar", "latex_dollar", "unit", "assignment", "text_unit", "bold"]))
    spelled = {
        "plain": f"{sign}{body}",
        "dollar": f"{sign}${body}",
        "latex_dollar": f"{sign}\\${body}",
        "unit": f"{sign}{body} dollars",
        "assignment": f"x = {sign}{body}",
        "text_unit": f"{sign}{body}\\text{{ cm}}",
        "bold": f"**{sign}{body}**",
    }[form]
    return value, spelled


@st.composite
def fraction_spellings(draw: st.DrawFn) -> tuple[Fraction, str]:
    numerator = draw(st.integers(min_value=-5000, max_value=5000))
    denominator = draw(st.integers(min_value=1, max_value=5000))
    scale = draw(st.integers(min_value=1, max_value=7))
    top, bottom = numerator * scale, denominator * scale
    form = draw(st.sampled_from(["slash", "frac", "dfrac", "signed_frac"]))
    spelled = {
        "slash": f"{top}/{bottom}",
        "frac": f"\\frac{{{top}}}{{{bottom}}}",
        "dfrac": f"\\dfrac{{{top}}}{{{bottom}}}",
        "signed_frac": f"{'-' if top < 0 else ''}\\frac{{{abs(top)}}}{{{bottom}}}",
    }[form]
    return Fraction(numerator, denominator), spelled


def _gsm8k_response(spelled: str) -> str:
    return f"Adding it all up gives the total.\nThe answer is {spelled}."


@settings(max_examples=300, deadline=None)
@given(decimal_spellings(), decimal_spellings())
def test_decimal_spellings_are_equal_exactly_when_values_are(
    checker: Checker, first: tuple[Fraction, str], second: tuple[Fraction, str]
) -> None:
    (value, spelled), (other_value, other_spelled) = first, second
    assert checker.check(_gsm8k_response(spelled), str(value), "gsm8k").correct
    result = checker.check(_gsm8k_response(other_spelled), spelled, "gsm8k")
    assert result.correct is (value == other_value), (spelled, other_spelled, result)
    keys_equal = canonical_answer(spelled, "gsm8k") == canonical_answer(other_spelled, "gsm8k")
    assert keys_equal is (value == other_value)


@settings(max_examples=300, deadline=None)
@given(fraction_spellings(), decimal_spellings())
def test_fraction_spellings_match_values_in_math_answers(
    checker: Checker, fraction: tuple[Fraction, str], decimal: tuple[Fraction, str]
) -> None:
    (value, spelled), (other_value, other_spelled) = fraction, decimal
    assert checker.check(f"\\boxed{{{spelled}}}", str(value), "math").correct
    same = checker.check(f"\\boxed{{{spelled}}}", f"{value.numerator}/{value.denominator}", "math")
    assert same.correct and same.reason == "numeric_equal"
    result = checker.check(_gsm8k_response(other_spelled), spelled, "gsm8k")
    assert result.correct is (value == other_value)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=1, max_value=10**6))
def test_a_different_integer_is_never_equal(checker: Checker, value: int, delta: int) -> None:
    for wrong in (value + delta, value - delta, value * 10 if value else 7):
        result = checker.check(f"The answer is {_with_separators(wrong)}.", _with_separators(value), "gsm8k")
        assert not result.correct and result.reason == "numeric_mismatch"


@pytest.mark.parametrize(
    ("text", "magnitude", "percent"),
    [
        ("18", 18, False),
        ("-18", -18, False),
        ("+18", 18, False),
        ("016", 16, False),
        ("1,234,567", 1234567, False),
        ("10{,}000", 10000, False),
        ("10\\,000", 10000, False),
        ("$1,234.50", Fraction(246_9, 2), False),
        ("-$5", -5, False),
        ("\\$5", 5, False),
        ("3/4", Fraction(3, 4), False),
        ("\\frac{3}{4}", Fraction(3, 4), False),
        ("\\dfrac{3}{4}", Fraction(3, 4), False),
        ("\\frac34", Fraction(3, 4), False),
        ("-\\frac{1}{2}", Fraction(-1, 2), False),
        ("50\\%", 50, True),
        ("50%", 50, True),
        ("50 percent", 50, True),
        ("x = 5", 5, False),
        ("30^\\circ", 30, False),
        ("5\\text{ cm}", 5, False),
        ("\\text{5}", 5, False),
        ("$18$", 18, False),
        ("18.", 18, False),
        ("−7", -7, False),
    ],
)
def test_parse_number_reads_every_listed_format(text: str, magnitude: Fraction | int, percent: bool) -> None:
    number = parse_number(text)
    assert number is not None and (number.magnitude, number.percent) == (Fraction(magnitude), percent)


@pytest.mark.parametrize(
    "text",
    ["", "x", "1,2", "1,23", "2x", "1/0", "\\sqrt{2}", "(1, 2)", "five", "1.2.3", "--5", "9" * 5000, "12:30"],
)
def test_parse_number_refuses_what_is_not_one_number(text: str) -> None:
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("phrase", "number"),
    [
        ("$1,234.50 in total", "$1,234.50"),
        ("18 dollars, 2 more than before", "18"),
        ("1/2 of the cake", "1/2"),
        ("x = 5", "5"),
        ("3 + 2 = 5 apples", "5"),
        ("-$5 (a loss)", "-$5"),
        ("18% of the class", "18%"),
        ("about x2 and y3", None),
        ("nothing here", None),
    ],
)
def test_find_number_picks_the_stated_number(phrase: str, number: str | None) -> None:
    assert find_number(phrase) == number


def test_percent_policy_switch(checker: Checker) -> None:
    with Checker(CheckerSettings(percent_policy="lenient")) as lenient:
        assert lenient.check("The answer is 18%.", "18", "gsm8k").correct
        assert lenient.check("\\boxed{50\\%}", "50", "math").correct
        assert lenient.check("\\boxed{50\\%}", "0.5", "math").correct
        assert not lenient.check("The answer is 18%.", "19", "gsm8k").correct
    assert not checker.check("The answer is 18%.", "18", "gsm8k").correct


@pytest.mark.parametrize(
    ("answers", "task"),
    [
        (["18", "18.0", "$18", "018", "18 dollars", "\\boxed{18}", "#### 18"], "gsm8k"),
        (["1,000", "1000", "1000.00", "$1,000"], "gsm8k"),
        (["\\frac{1}{2}", "0.5", "1/2", "\\dfrac12", "50\\%"], "math"),
        (["\\text{Monday}", "\\textbf{Monday}", "\\text{ Monday }"], "math"),
        (["C", "(C)", "c", "\\boxed{C}", "C)"], "mcq"),
    ],
)
def test_canonical_answer_groups_equal_answers(answers: list[str], task: str) -> None:
    keys = {canonical_answer(answer, task, percent_policy="strict") for answer in answers}  # type: ignore[arg-type]
    assert len(keys) == 1


def test_canonical_answer_separates_different_answers() -> None:
    assert canonical_answer("18", "gsm8k") != canonical_answer("19", "gsm8k")
    assert canonical_answer("50%", "gsm8k") != canonical_answer("50", "gsm8k")
    assert canonical_answer("50%", "gsm8k", percent_policy="lenient") == canonical_answer("50", "gsm8k")
    assert canonical_answer("\\sqrt{2}", "math") != canonical_answer("\\sqrt{3}", "math")
    assert canonical_answer("B", "mcq") != canonical_answer("C", "mcq")
