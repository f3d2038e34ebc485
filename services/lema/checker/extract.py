"""Find the final answer a response states, and the gold answer a reference states.

A response may state an answer several times while it reasons; the final one is the answer marker that comes last
in the text: 'The answer is …', 'Answer: …', `\\boxed{}`, '#### …' or a configured pattern. Only when there is no
marker does a fallback apply (GSM8K: the last number; MATH and multiple choice: a short response that is only an
answer). The reason says which rule found the answer, so a surprising verdict can be traced back to the text.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from lema.checker.choices import choice_letter
from lema.checker.latex import boxed_answer, strip_math_delimiters
from lema.checker.numbers import find_number, parse_number
from lema.records import Task


def _last_of(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """A regex whose match ends at the last occurrence of `pattern` (group 'last'): the greedy prefix backtracks
    from the end of the text, which is far cheaper than walking every occurrence from the start."""
    return re.compile(rf"(?s:.*)(?P<last>{pattern})", flags)


# (reason, words one of which the text must contain, the marker): the words spare a regex scan of most texts.
_MARKERS = (
    ("answer_is", ("answer", "option", "choice"), _last_of(r"\b(?:answer|option|choice)\s+is\b\s*:?", re.IGNORECASE)),
    ("answer_colon", ("answer",), _last_of(r"\banswer\s*\**\s*:", re.IGNORECASE)),
    ("hash_marks", ("####",), _last_of(r"####")),
)
_LAST_NUMBER = _last_of(r"(?<![\w.,/])-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")
_SENTENCE_END = re.compile(r"\.(?!\d)|\n")
_MATH_OPENINGS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_PHRASE_LIMIT = 2_000  # characters read after a marker; an answer is never longer
_BARE_LIMIT = 200  # a response this short, on one line, with no marker, may be the answer itself


@dataclass(frozen=True)
class Extraction:
    """The answer found (None when none was) and the rule that found it, e.g. 'boxed' or 'no_answer'."""

    answer: str | None
    reason: str


def compile_patterns(patterns: Sequence[str | re.Pattern[str]]) -> tuple[re.Pattern[str], ...]:
    """Answer patterns from configuration: the first group (or the whole match) is the answer phrase."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"answer pattern {pattern!r}: invalid regular expression: {exc}") from exc
    return tuple(compiled)


def extract_answer(
    text: str,
    task: Task,
    choices: Sequence[str] = (),
    patterns: Sequence[str | re.Pattern[str]] = (),
) -> Extraction:
    """The final answer of a model response: a number for GSM8K, LaTeX for MATH, a choice letter for MCQ."""
    found: list[tuple[int, str, str | None]] = []  # (position, reason, phrase)
    for pattern in compile_patterns(patterns):
        match = _last(pattern.finditer(text))
        if match:
            phrase = match.group(1) if pattern.groups else match.group(0)
            found.append((match.start(), "pattern", phrase))
    lowered = text.lower()
    for reason, words, marker in _MARKERS:
        match = marker.match(text) if any(word in lowered for word in words) else None
        if match:
            found.append((match.start("last"), reason, _phrase_after(text, match.end("last"))))
    boxed = boxed_answer(text)
    if boxed:
        found.append((boxed[0], "boxed" if boxed[1] is not None else "unclosed_boxed", boxed[1]))
    for _, reason, phrase in sorted(found, key=lambda item: item[0], reverse=True):
        if phrase is None:
            return Extraction(None, reason)
        answer = _answer_in_phrase(phrase, task, choices)
        if answer:
            return Extraction(answer, reason)
    return _fallback(text, task, choices)


@lru_cache(maxsize=4_096)
def extract_gold(text: str, task: Task) -> str | None:
    """The gold answer from a bare answer ('18', '\\frac12', 'C') or a whole reference solution
    (GSM8K '… #### 18', a MATH solution with `\\boxed{}`); None when there is none.

    Cached: every sample of a question is checked against the same gold.
    """
    if task == "mcq" or parse_number(text) is None:  # else a bare number, the common case: no search needed
        stated = extract_answer(text, task)
        if stated.reason not in ("last_number", "bare", "no_answer"):
            return stated.answer
    return _answer_in_phrase(text, task, ())


def _answer_in_phrase(phrase: str, task: Task, choices: Sequence[str]) -> str | None:
    """The answer in the words after a marker: '$1,234.50 in total.' -> '$1,234.50' for GSM8K."""
    phrase = strip_math_delimiters(phrase.strip().strip("*").strip())
    if not phrase:
        return None
    if task == "mcq":
        return choice_letter(phrase, choices) or phrase
    if task == "gsm8k" and parse_number(phrase) is None:
        return find_number(phrase) or phrase
    return phrase


def _phrase_after(text: str, start: int) -> str:
    """The answer phrase that follows a marker: a math span if one opens right there, else up to the sentence end."""
    rest = text[start : start + _PHRASE_LIMIT].lstrip(" \t*:")
    for opening, closing in _MATH_OPENINGS:
        if rest.startswith(opening):
            close = rest.find(closing, len(opening))
            if close > 0:
                return rest[len(opening) : close]
    sentence_end = _SENTENCE_END.search(rest)
    return rest[: sentence_end.start()] if sentence_end else rest


def _fallback(text: str, task: Task, choices: Sequence[str]) -> Extraction:
    if task == "gsm8k":
        number = _LAST_NUMBER.match(text)
        return Extraction(number.group("last"), "last_number") if number else Extraction(None, "no_answer")
    bare = text.strip()
    if bare and len(bare) <= _BARE_LIMIT and "\n" not in bare:
        answer = _answer_in_phrase(bare.rstrip("."), task, choices)
        if task == "math" or (answer and choice_letter(answer, choices)):
            return Extraction(answer, "bare")
    return Extraction(None, "no_answer")


def _last(matches: Iterator[re.Match[str]]) -> re.Match[str] | None:
    tail = deque(matches, maxlen=1)
    return tail[0] if tail else None
