"""Text-level LaTeX helpers: find `\\boxed{}` answers and normalise answers for comparison, without parsing math.

Everything here is linear in the input and never recurses, so a megabyte of nested braces costs milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What may sit between boxes that state one answer together: '\boxed{1}, \boxed{2}', '$\boxed{1}$ and $x=\boxed{2}$',
# '\boxed{1} \quad \text{and} \quad \boxed{2}', '\(y_1 = \boxed{1}\) and \(y_2 = \boxed{2}\)'.
_GAP = r"(?:\s|\$|\\[()\[\]]|\\q?quad\b|\\[,;: ])*"
_BOX_SEPARATOR = re.compile(
    rf"{_GAP}(?P<joint>,|;|and|or|\\text\{{\s*(?:,|and|or|[\w ()]{{0,40}}\band)\s*\}})?{_GAP}"
    rf"(?:[A-Za-z](?:_\{{?\w+\}}?)?\s*=\s*)?{_GAP}",
    re.IGNORECASE,
)
# Words between two different boxes that make them alternatives: '\boxed{7}, but it could also be \boxed{8}'.
_HEDGE = re.compile(r"\b(?:or|could|might|maybe|perhaps|possibly|alternatively|either)\b", re.IGNORECASE)
_HEDGE_REACH = 120  # characters: a hedge joins boxes close together, not a box of an earlier part of the solution
_SPACING = re.compile(r"\\[,!;: ]|\\(?:left|right|displaystyle|big|Big|bigg|Bigg)\b|~|\s+")
_TEXT_COMMAND = re.compile(r"\\(?:textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\{")
_UNIT_SUFFIX = re.compile(r"(?<=[\w}.)%])\s*\\text\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree")


@dataclass(frozen=True)
class Boxed:
    """The final boxed answer: where it starts, its content (None when unknown) and why, e.g. 'hedged'."""

    start: int
    content: str | None
    reason: str


def boxed_answer(text: str) -> Boxed | None:
    """The last `\\boxed{...}` of `text`, or None when there is no box.

    Boxes right before it that are joined only by ',' / 'and' / '\\text{and}' list the solutions of one problem and
    are returned joined by ', ' ('x = \\boxed{1} and \\boxed{2}' -> '1, 2'). Two different boxes offered as
    alternatives ('\\boxed{7} or \\boxed{8}', '\\boxed{7}, but it could also be \\boxed{8}') are a hedge: no answer.
    An unclosed last box gives no answer either: an earlier box must not stand in for it.
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    openings = list(_BOX_OPENING.finditer(text))
    if not openings:
        return None
    closing = _matching_braces(text)
    last = openings[-1]
    last_end = closing.get(last.end() - 1)
    if last_end is None:
        return Boxed(last.start(), None, "unclosed_boxed")
    parts = [text[last.end() : last_end].strip()]
    start, hedged = last.start(), False
    for opening in reversed(openings[:-1]):
        end = closing.get(opening.end() - 1)
        if end is None or start - end > _HEDGE_REACH:
            break
        content = text[opening.end() : end].strip()
        between = text[end + 1 : start]
        separator = _BOX_SEPARATOR.fullmatch(between)
        if separator is None:
            hedged = hedged or (content not in parts and "\n\n" not in between and bool(_HEDGE.search(between)))
            break
        hedged = hedged or (content not in parts and bool(_HEDGE.search(separator["joint"] or "")))
        parts.append(content)
        start = opening.start()
    if hedged:
        return Boxed(start, None, "hedged")
    unique = list(dict.fromkeys(reversed(parts)))
    return Boxed(start, ", ".join(unique), "boxed")


def strip_math_delimiters(answer: str) -> str:
    """'$x$', '$$x$$', '\\(x\\)', '\\[x\\]' -> 'x'; unescaped '$' left inside are dropped, '\\$' stays."""
    answer = answer.strip()
    for opening, closing in (("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(opening) and answer.endswith(closing):
            answer = answer[len(opening) : -len(closing)]
    return re.sub(r"(?<!\\)\$", "", answer).strip()


def normalize_latex(answer: str) -> str:
    """A canonical spelling of a LaTeX answer for exact comparison: spacing, sizing, font commands, '\\dfrac',
    degrees, a trailing unit in '\\text{}', a trailing period and '{,}' thousands separators do not count."""
    answer = strip_math_delimiters(answer).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = answer.replace("{,}", ",").replace("\\%", "%")
    answer = _SPACING.sub("", _TEXT_COMMAND.sub("\\\\text{", answer)).rstrip(".")
    answer = _DEGREES.sub("", _UNIT_SUFFIX.sub("", answer))
    if answer.startswith("\\text{") and answer.endswith("}") and answer.count("{") == 1:
        answer = answer[len("\\text{") : -1]
    return answer


def unit_of(answer: str) -> str:
    """The unit a trailing '\\text{…}' names, in one spelling per unit ('5\\text{ cm}' -> 'cm'); '' when none.

    Answers are compared without their units, except that two different units never make an answer equal."""
    if "\\" not in answer:
        return ""
    match = _UNIT_SUFFIX.search(_TEXT_COMMAND.sub("\\\\text{", strip_math_delimiters(answer)))
    if match is None:
        return ""
    words = match.group(0).strip()[len("\\text{") : -1].lower().split()
    unit = " ".join(words)
    unit = _UNIT_SPELLINGS.get(unit, unit)
    if unit not in _UNIT_SPELLINGS.values() and unit.endswith("s") and len(unit) > 3:
        unit = _UNIT_SPELLINGS.get(unit[:-1], unit[:-1])  # 'inches' -> 'inch' -> 'in', 'apples' -> 'apple'
    return unit


_UNIT_SPELLINGS = {
    **dict.fromkeys(("centimeter", "centimetre", "centimeters", "centimetres"), "cm"),
    **dict.fromkeys(("millimeter", "millimetre", "millimeters", "millimetres"), "mm"),
    **dict.fromkeys(("kilometer", "kilometre", "kilometers", "kilometres"), "km"),
    **dict.fromkeys(("meter", "metre", "meters", "metres"), "m"),
    **dict.fromkeys(("inch", "inches"), "in"),
    **dict.fromkeys(("foot", "feet"), "ft"),
    **dict.fromkeys(("yard", "yards"), "yd"),
    **dict.fromkeys(("mile", "miles"), "mi"),
    **dict.fromkeys(("second", "seconds", "sec", "secs"), "s"),
    **dict.fromkeys(("minute", "minutes", "mins"), "min"),
    **dict.fromkeys(("hour", "hours", "hr", "hrs"), "h"),
    **dict.fromkeys(("gram", "grams"), "g"),
    **dict.fromkeys(("kilogram", "kilograms"), "kg"),
    **dict.fromkeys(("degree", "degrees"), "deg"),
    **dict.fromkeys(("dollar", "dollars"), "dollar"),
    **dict.fromkeys(("cent", "cents"), "cent"),
}


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each '{' -> index of its '}', skipping escaped '\\{' and '\\}' (literal set braces)."""
    pairs: dict[int, int] = {}
    open_at: list[int] = []
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "{":
            open_at.append(index)
        elif char == "}" and open_at:
            pairs[open_at.pop()] = index
    return pairs
