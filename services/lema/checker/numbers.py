"""Plain numbers without sympy: the fast path for every GSM8K answer and for MATH answers that are just numbers.

Values are exact `Fraction`s, so no float rounding ever decides a verdict ('1/3' is not '0.333'), and a percent sign
is kept apart from the number so that the percent policy, not the parser, decides whether '50%' equals '50'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from lema.checker.latex import normalize_latex, strip_math_delimiters

PercentPolicy = Literal["strict", "lenient"]
PercentSetting = Literal["by_task", "strict", "lenient"]
# The graders' convention per task: MATH graders strip a percent sign ('25\\%' is answered by '25'); GSM8K answers
# are compared by value ('50%' is 0.5, not 50).
_PERCENT_BY_TASK: dict[str, PercentPolicy] = {"math": "lenient", "gsm8k": "strict", "mcq": "strict"}


def percent_policy_for(setting: PercentSetting, task: str) -> PercentPolicy:
    """The percent policy that applies to `task` under the configured setting."""
    return _PERCENT_BY_TASK.get(task, "strict") if setting == "by_task" else setting


# An unsigned decimal: '1,234.50' (thousands separators only in groups of three), '016', '.5'.
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
_PERCENT = r"(?:\s?(?:%|\s?percent\b))"

# A number inside running text: a sign and a currency sign in either order, a whole part before a fraction ('2 1/2'),
# an optional '/denominator' or exponent ('1e5'), an optional percent. It never starts inside a word or another
# number, so 'x2' or the '5' of '3.5' are not numbers.
_NUMBER_IN_TEXT = re.compile(
    rf"(?<![\w.,/])(?:[-−]?\\?\$\s?[-−]?|[-−])?(?:\d+\s(?=\d+/\d))?{_UNSIGNED}"
    rf"(?:/{_UNSIGNED}|e[-+]?\d{{1,3}}(?!\w))?(?![\d/])(?:{_PERCENT})?",
    re.IGNORECASE,
)

# A whole answer that is exactly one number, after `_simplify` removed the LaTeX around it.
# A mixed number is a whole part right before a fraction: '1\\frac{1}{4}' is 5/4 (see `_MIXED` for '2 1/2').
# Scientific notation: '1e5', '2.5\\times10^{-3}'; the exponent is bounded so that no answer costs a huge integer.
_WHOLE_NUMBER = re.compile(
    rf"(?P<sign>[-+]?)(?:(?P<whole>\d+)?(?:\\frac\{{(?P<top>-?{_UNSIGNED})\}}\{{(?P<bottom>-?{_UNSIGNED})\}}"
    rf"|\\frac(?P<top1>\d)(?P<bottom1>\d))"
    rf"|(?P<numerator>{_UNSIGNED})(?:/(?P<denominator>{_UNSIGNED})"
    rf"|(?:e|\\times10\^|\\cdot10\^)\{{?(?P<exponent>[-+]?\d{{1,3}})\}}?)?)(?P<percent>%|percent)?",
    re.IGNORECASE,
)
_MIXED = re.compile(r"(?<![\d.,])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])")  # '2 1/2': marked before spaces are removed
_LIST_COMMA = re.compile(r",\s")  # '1, 100' is a list of two numbers, never one thousands-separated number

_PLAIN = re.compile(r"-?\d+(?:\.\d+)?")  # most answers: no parsing beyond this
_MAX_LENGTH = 1_000  # longer text is not one plain number; it goes to the symbolic path or fails as text

_VARIABLE_PREFIX = re.compile(r"^[A-Za-z]=")
_BRACKETED = re.compile(r"\s*(?P<opening>\\\{|[(\[])(?P<inner>.*)(?P<closing>\\\}|[)\]])\s*", re.DOTALL)
_THOUSANDS_GROUP = re.compile(r"\d{3}")  # right after a comma with no space: '1,000' (a space makes it a list)
_AND = re.compile(r"\s*,?\s*(?:\\text\{\s*and\s*\}|\band\b)\s*")  # '1, 2, and 3', '1 \\text{ and } 2': a list
_GROUP = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Number:
    """A number as written: `magnitude` is 50 for '50%', and `percent` records the sign."""

    magnitude: Fraction
    percent: bool = False
    decimal: bool = False  # written with a decimal point: '0.0833' may be a rounding of 1/12

    @property
    def value(self) -> Fraction:
        return self.magnitude / 100 if self.percent else self.magnitude


def find_number(text: str) -> str | None:
    """The number a short answer phrase states: '$1,234.50 in total' -> '$1,234.50', 'x = 5' -> '5'.

    After an '=' the result is what counts ('3 + 2 = 5 apples' -> '5'); otherwise the first number does
    ('1/2 of the cake' -> '1/2', '18 dollars, 2 more than before' -> '18').
    """
    tail = text.rsplit("=", 1)[-1]
    match = _NUMBER_IN_TEXT.search(tail) or _NUMBER_IN_TEXT.search(text)
    return match.group(0).strip() if match else None


@lru_cache(maxsize=16_384)
def parse_number(text: str) -> Number | None:
    """`text` as one exact number, or None when it is anything else (an expression, a list, words, too long).

    Accepts signs, '$' and '\\$', thousands separators ('1,234', '10{,}000'), leading zeros, decimals, 'a/b',
    '\\frac{a}{b}', a percent sign ('%', '\\%', 'percent'), a 'x =' prefix, degrees and a unit in '\\text{}'.
    Cached: the same gold answer is parsed for every sample of its question.
    """
    if len(text) > _MAX_LENGTH:
        return None
    if _PLAIN.fullmatch(text):
        return Number(_exact(text), decimal="." in text)
    if _LIST_COMMA.search(text):
        return None
    match = _WHOLE_NUMBER.fullmatch(_simplify(_MIXED.sub(r"\1\\frac{\2}{\3}", text)))
    if match is None:
        return None
    top = match["top"] or match["top1"] or match["numerator"]
    bottom = match["bottom"] or match["bottom1"] or match["denominator"] or "1"
    numerator, denominator = _exact(top), _exact(bottom)
    if denominator == 0:
        return None
    magnitude = numerator / denominator
    if match["whole"]:
        if magnitude < 0:
            return None  # '2\\frac{-1}{2}' is no mixed number
        magnitude += int(match["whole"])
    if match["exponent"]:
        magnitude *= Fraction(10) ** int(match["exponent"])
    return Number(
        -magnitude if match["sign"] == "-" else magnitude,
        percent=match["percent"] is not None,
        decimal="." in top and not match["exponent"],
    )


@dataclass(frozen=True)
class NumberList:
    """A tuple, interval or set of plain numbers: '(1, -2]', '\\{3, 1\\}', or a bare list '1, 2'.

    `brackets` is the opening and closing pair: '()', '(]', '[)', '[]', '{}' for a set, '' for a bare list.
    """

    brackets: str
    items: tuple[Number, ...]

    @property
    def unordered(self) -> bool:
        return self.brackets in ("{}", "")


def parse_number_list(text: str) -> NumberList | None:
    """`text` as a list of two or more plain numbers, or None (also when a comma may be a thousands separator)."""
    if len(text) > _MAX_LENGTH or ("," not in text and "and" not in text):
        return None
    bare = _AND.sub(",", strip_math_delimiters(text).replace("\\left", "").replace("\\right", ""))
    listed = _BRACKETED.fullmatch(bare)
    brackets = (listed["opening"][-1] + listed["closing"][-1]) if listed else ""
    parts = (listed["inner"] if listed else bare).split(",")
    if any(_THOUSANDS_GROUP.fullmatch(part) for part in parts[1:]):
        return None  # '(1,000, 2)': a list of three, or of two?
    items = tuple(number for number in map(parse_number, parts) if number is not None)
    return NumberList(brackets, items) if len(items) == len(parts) >= 2 else None


def number_lists_equal(gold: NumberList, predicted: NumberList, policy: PercentPolicy) -> bool | None:
    """Same tuple, interval or set? None when the brackets differ, which Math-Verify's rules must settle."""
    if gold.brackets != predicted.brackets and not (gold.unordered and predicted.unordered):
        return None
    if gold.unordered:
        return _covers(gold.items, predicted.items, policy) and _covers(predicted.items, gold.items, policy)
    return len(gold.items) == len(predicted.items) and all(
        numbers_equal(g, p, policy) for g, p in zip(gold.items, predicted.items, strict=True)
    )


def _covers(these: tuple[Number, ...], those: tuple[Number, ...], policy: PercentPolicy) -> bool:
    return all(any(numbers_equal(this, that, policy) for this in these) for that in those)


def numbers_equal(gold: Number, predicted: Number, policy: PercentPolicy) -> bool:
    """Exact equality; under the lenient policy a percent sign may also be ignored ('50%' == '50').

    A decimal is equal to a fraction that no decimal can state exactly (1/12) when it agrees to a relative 1e-5
    ('0.0833333'): it can only be a rounding. A fraction that a decimal can state is compared exactly."""
    if gold.value == predicted.value or (policy == "lenient" and gold.magnitude == predicted.magnitude):
        return True
    for decimal, fraction in ((gold, predicted), (predicted, gold)):
        if decimal.decimal and not fraction.decimal and not _terminates(fraction.value):
            return abs(decimal.value - fraction.value) <= _ROUNDING * abs(fraction.value)
    return False


_ROUNDING = Fraction(1, 100_000)  # the same relative tolerance as the symbolic path's for decimals


def _terminates(value: Fraction) -> bool:
    """Whether a decimal can state `value` exactly: its denominator has no prime factor but 2 and 5."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def number_key(number: Number, policy: PercentPolicy) -> str:
    """A grouping key: equal numbers get the same key ('18', '18.0' and '$18' -> '18'; '50%' -> '1/2' if strict)."""
    value = number.magnitude if policy == "lenient" else number.value
    return str(value)


def _exact(decimal: str) -> Fraction:
    """'-1,234.50' -> Fraction(-2469, 2), from integers: Fraction's own string parser is the fast path's hot spot."""
    negative = decimal.startswith("-")
    whole, _, decimals = decimal.lstrip("-").replace(",", "").partition(".")
    scale = 10 ** len(decimals)
    value = Fraction(int(whole or "0") * scale + int(decimals or "0"), scale)
    return -value if negative else value


def _simplify(text: str) -> str:
    """The number left when the LaTeX and prose around it are gone: '$x = -\\$1{,}234.5\\%$' -> '-1,234.5%'."""
    text = normalize_latex(text.replace("−", "-"))
    text = _VARIABLE_PREFIX.sub("", text)
    group = _GROUP.fullmatch(text)
    if group:
        text = group[1]
    sign = text[:1] if text[:1] in ("-", "+") else ""
    return sign + text[len(sign) :].removeprefix("\\$")
