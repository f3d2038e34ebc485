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
    (
        "answer_colon",
        ("answer", "option", "choice"),
        _last_of(r"\b(?:answer|option|choice)\s*\**\s*(?::|[—–]|(?=\$|\\\[|\\\())", re.IGNORECASE),
    ),
    ("answer_heading", ("answer",), _last_of(r"\bfinal\s+answer\b[ \t*#]*\n", re.IGNORECASE)),
    (
        "chosen",
        ("choose", "chose", "select", "pick", "go with"),
        _last_of(r"\b(?:choose|chose|select|pick|go with)\b(?:\s+(?:option|choice|answer))?\s*:?", re.IGNORECASE),
    ),
    ("hash_marks", ("####",), _last_of(r"####")),
)
# What a marker may be followed by that is no answer: 'so our answer is correct', 'the answer is not 18'.
_NOT_AN_ANSWER = re.compile(
    r"(?:not|never|n't|also|incorrect|correct|right|wrong|valid|invalid|reasonable|consistent|verified|confirmed"
    r"|accurate|indeed|as follows|following|below|above|shown|clear|obvious|sound|plausible|the same|this|that)\b",
    re.IGNORECASE,
)
# A negated mention ends the answer phrase: 'A (x), not B (y)', '20 rather than 18'.
# So does a clause that explains it: '7, since 3 + 4 = 7', '12, which is the total'.
_NEGATED_TAIL = re.compile(
    r"[,;]\s*(?:not|but not|since|because|as|which|where|so|hence|thus|given)\b|\s+(?:rather than|instead of)\b",
    re.IGNORECASE,
)
# A negated mention inside prose never counts: 'the number is not 10 which is 1,000.99'.
_NEGATED = re.compile(
    r"\b(?:not|never)\s+(?:about\s+|equal\s+to\s+|exactly\s+|just\s+)?(?:\$[^$]*\$|\S+)", re.IGNORECASE
)
_HEDGE_WORD = re.compile(r"\bor\b|\\text\{\s*or\s*\}", re.IGNORECASE)  # '7 or 8' is two answers, not one
_CONCLUSION = _last_of(r"\b(?:therefore|thus|hence|so|in conclusion|in summary|finally)\b,?", re.IGNORECASE)
_COPULA = _last_of(r"(?:\s(?:is|are|equals|was|be|becomes)\s|=|:\s)")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_WORD = re.compile(r"(?<![\\\w])(?!(?:and|or)\b)[A-Za-z]{2,}\b")  # 'and' / 'or' join answers, they make no prose
_COMMAND_ARGUMENT = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")
_LAST_NUMBER = _last_of(r"(?<![\w.,/])-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")
_SENTENCE_END = re.compile(r"\.(?!\d)|\n")
_MATH_OPENINGS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_PHRASE_LIMIT = 2_000  # characters read after a marker; an answer is never longer
_MARKER_OCCURRENCES = 3  # the last few of each marker: a later 'the answer is correct' must not hide the answer
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
        end = len(text) if any(word in lowered for word in words) else 0
        for _ in range(_MARKER_OCCURRENCES):
            match = marker.match(text, 0, end)
            if match is None:
                break
            found.append((match.start("last"), reason, _phrase_after(text, match.end("last"))))
            end = match.start("last")
    boxed = boxed_answer(text)
    if boxed:
        found.append((boxed.start, boxed.reason, boxed.content))
    for _, reason, stated in sorted(found, key=lambda item: item[0], reverse=True):
        if stated is None:
            return Extraction(None, reason)
        phrase = _cut_negated_tail(stated.strip().strip("*").strip())
        if reason != "boxed" and _NOT_AN_ANSWER.match(phrase):
            continue  # '… \\boxed{44}, so our answer is correct': the box states the answer, not this phrase
        if task != "mcq" and _hedged(phrase, task):
            return Extraction(None, "hedged")
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
    """The answer in the words after a marker: '$1,234.50 in total.' -> '$1,234.50' for GSM8K, 'The largest $n$ is
    34' -> '34' for MATH."""
    phrase = phrase.strip().strip("*").strip()
    if task == "math" and _is_prose(phrase):
        phrase = _math_in_prose(phrase)
    phrase = strip_math_delimiters(phrase).strip().rstrip(".").strip('"').strip()
    if not phrase:
        return None
    if task == "mcq":
        return choice_letter(phrase, choices) or phrase
    if task == "gsm8k" and parse_number(phrase) is None:
        return find_number(_NEGATED.sub(" ", phrase)) or phrase
    return phrase


def _cut_negated_tail(phrase: str) -> str:
    """'20, not 18' -> '20'; 'not 18' stays (it is no answer at all, which the caller sees)."""
    negated = _NEGATED_TAIL.search(phrase)
    return phrase[: negated.start()] if negated and negated.start() > 0 else phrase


def _hedged(phrase: str, task: Task) -> bool:
    """Whether the phrase offers alternatives ('7 or 8', '$x=2$ or $x=3$'): it then states no single answer."""
    if not _HEDGE_WORD.search(phrase):
        return False
    if task == "gsm8k":
        return len(set(re.findall(r"\d[\d,.]*", phrase))) > 1
    return True


def _is_prose(phrase: str) -> bool:
    """Two or more words outside math spans and LaTeX commands: a sentence, not a bare answer."""
    outside = _COMMAND_ARGUMENT.sub(" ", _MATH_SPAN.sub(" ", phrase))
    return len(_WORD.findall(outside)) >= 2


def _math_in_prose(sentence: str) -> str:
    """The answer a sentence states: what follows its last 'is' / '=' / ': ' if that is math or a number, else its
    last math span, else its first number; negated mentions ('not 10') never count. The sentence if none is found."""
    text = _NEGATED.sub(" ", sentence)
    masked = _MATH_SPAN.sub(lambda span: "$" + "_" * (len(span.group(0)) - 2) + "$", text)  # no '=' inside math
    copula = _COPULA.match(masked)
    tail = text[copula.end() :] if copula else None
    if tail is not None and tail.strip() and not _is_prose(tail):
        number = find_number(tail) if "$" not in tail and "\\" not in tail else None
        return (
            number if number and parse_number(tail.strip().rstrip(".")) is None else tail
        )  # '1,000.99€' -> the number
    for part in (tail, text):
        if not part:
            continue
        spans = [next(group for group in span.groups() if group is not None) for span in _MATH_SPAN.finditer(part)]
        if spans:
            return spans[-1]
        number = find_number(part)
        if number:
            return number
    return sentence


def _phrase_after(text: str, start: int) -> str:
    """The answer phrase that follows a marker: a math span if one opens right there, else up to the sentence end.
    A marker that ends its line ('Final choice:', a 'Final Answer' heading) is followed by the next line."""
    rest = text[start : start + _PHRASE_LIMIT].lstrip(" \t*:#—–")
    if rest.startswith("\n"):
        rest = rest.lstrip(" \t*:#\n")
    for opening, closing in _MATH_OPENINGS:
        if rest.startswith(opening):
            close = _unescaped_find(rest, closing, len(opening))
            if close > 0:
                return rest[len(opening) : close]
    sentence_end = _SENTENCE_END.search(rest)
    return rest[: sentence_end.start()] if sentence_end else rest


def _unescaped_find(text: str, closing: str, start: int) -> int:
    """The index of `closing` from `start`, skipping an escaped dollar ('\\$' is a currency sign)."""
    index = text.find(closing, start)
    while closing.startswith("$") and index > 0 and text[index - 1] == "\\":
        index = text.find(closing, index + 1)
    return index


def _fallback(text: str, task: Task, choices: Sequence[str]) -> Extraction:
    if task == "gsm8k":
        number = _LAST_NUMBER.match(text)
        return Extraction(number.group("last"), "last_number") if number else Extraction(None, "no_answer")
    bare = text.strip()
    if bare and len(bare) <= _BARE_LIMIT and "\n" not in bare:
        answer = _answer_in_phrase(_cut_negated_tail(bare.rstrip(".")), task, choices)
        if task == "math" or (answer and choice_letter(answer, choices)):
            return Extraction(answer, "bare")
    conclusion = _CONCLUSION.match(text) if task == "math" else None
    if conclusion:
        phrase = _cut_negated_tail(_phrase_after(text, conclusion.end("last")))
        answer = None if _hedged(phrase, task) else _answer_in_phrase(phrase, task, choices)
        if answer:
            return Extraction(answer, "conclusion")
    return Extraction(None, "no_answer")


def _last(matches: Iterator[re.Match[str]]) -> re.Match[str] | None:
    tail = deque(matches, maxlen=1)
    return tail[0] if tail else None
