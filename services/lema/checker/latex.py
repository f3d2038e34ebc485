"""Text-level LaTeX helpers: find `\\boxed{}` answers and normalise answers for comparison, without parsing math.

Everything here is linear in the input and never recurses, so a megabyte of nested braces costs milliseconds.
"""

from __future__ import annotations

import re

_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What may sit between boxes that state one answer together: '\boxed{1}, \boxed{2}', '$\boxed{1}$ and $x=\boxed{2}$'.
_BOX_SEPARATOR = re.compile(
    r"\s*\$*\s*(?:,|;|and|or|\\text\{\s*(?:,|and|or)\s*\})?\s*\$*\s*(?:[A-Za-z]\s*=\s*)?", re.IGNORECASE
)
_SPACING = re.compile(r"\\[,!;: ]|\\(?:left|right|displaystyle|big|Big|bigg|Bigg)\b|~|\s+")
_TEXT_COMMAND = re.compile(r"\\(?:textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\{")
_UNIT_SUFFIX = re.compile(r"(?<=[\w}.)%])\s*\\text\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree")


def boxed_answer(text: str) -> tuple[int, str | None] | None:
    """The last `\\boxed{...}` of `text` as (start, content), or None when there is no box.

    Boxes right before it that are joined only by ',' / 'and' / 'or' belong to the same answer and are returned
    joined by ', ' ('x = \\boxed{1} or \\boxed{2}' -> '1, 2'): a hedge between two answers then matches neither.
    An unclosed last box gives (start, None): its answer is unknown, and an earlier box must not stand in for it.
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
        return last.start(), None
    parts = [text[last.end() : last_end]]
    start = last.start()
    for opening in reversed(openings[:-1]):
        end = closing.get(opening.end() - 1)
        if end is None or not _BOX_SEPARATOR.fullmatch(text, end + 1, start):
            break
        parts.append(text[opening.end() : end])
        start = opening.start()
    return start, ", ".join(part.strip() for part in reversed(parts))


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
