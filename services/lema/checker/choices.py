"""Multiple-choice answers: a letter ('(C)', 'C)', 'C', '\\boxed{C}') or the text of one of the choices.

A letter must stand as a label, never be picked out of a longer expression: '\\boxed{2A+B}' names no choice. The
words 'A' and 'I' followed by more words are read as English unless those words are that choice's text or a
connective ('A because …').
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from lema.checker.numbers import number_key, parse_number

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}|\*\*|\$")
_LETTER_ONLY = re.compile(r"\(?([A-Za-z])\)?[.:]?")
_LETTER_LABEL = re.compile(r"(?:\(([A-Z])\)|([A-Z])[).:,;])\s*(.*)", re.DOTALL)
_LETTER_WORD = re.compile(r"([A-Z])\s+(.*)", re.DOTALL)
_CHOICE_LABEL = re.compile(r"\s*(?:\(([A-Za-z])\)|([A-Za-z])[).:])\s*")
_NOT_WORD = re.compile(r"[\W_]+")
_ENGLISH_WORDS = ("A", "I")
# Words that cannot start the noun phrase after the article 'A', so 'A because …' names choice A.
_CONNECTIVES = re.compile(r"(?:because|since|as|is|was|which|that|and|or|so|with|[-–—,;])(?!\w)", re.IGNORECASE)
_UNLABELLED_LETTERS = string.ascii_uppercase[:10]  # letters accepted after a space when the choices are unknown


def choice_letter(phrase: str, choices: Sequence[str]) -> str | None:
    """The choice a phrase names, as an upper-case letter, or None when it names none (or several)."""
    text = _WRAPPERS.sub(lambda match: match.group(1) or "", phrase).strip().rstrip(".").strip()
    only = _LETTER_ONLY.fullmatch(text)
    if only:
        return only.group(1).upper()
    label = _LETTER_LABEL.match(text)
    if label:
        return label.group(1) or label.group(2)
    word = _LETTER_WORD.match(text)
    if word:
        letter, rest = word.groups()
        valid = string.ascii_uppercase[: len(choices)] if choices else _UNLABELLED_LETTERS
        if letter in valid and (
            letter not in _ENGLISH_WORDS
            or _CONNECTIVES.match(rest)
            or rest.startswith("(")  # 'A (x), not B (y)': a label with its text in brackets
            or _names(rest, choices) == letter
        ):
            return letter
    return _names(text, choices)


def choice_text(choice: str, index: int) -> str:
    """A choice without its own label: '(B) library' at index 1 -> 'library'."""
    label = _CHOICE_LABEL.match(choice)
    if label and (label.group(1) or label.group(2)).upper() == string.ascii_uppercase[index % 26]:
        return choice[label.end() :]
    return choice


def text_key(text: str) -> str:
    """Case, punctuation and number formatting do not matter when a phrase is compared with a choice text."""
    number = parse_number(text)
    return f"#{number_key(number, 'strict')}" if number else _words(text)


def compare_choices(gold: str, predicted: str, choices: Sequence[str]) -> tuple[bool, str]:
    """Same choice? Letters are compared when both sides name one, choice texts otherwise."""
    gold_letter, predicted_letter = choice_letter(gold, choices), choice_letter(predicted, choices)
    if gold_letter and predicted_letter:
        same = gold_letter == predicted_letter
    else:
        same = bool(text_key(gold)) and text_key(gold) == text_key(predicted)
    return same, "choice_equal" if same else "choice_mismatch"


def _names(text: str, choices: Sequence[str]) -> str | None:
    """The one choice whose text the phrase is, or else contains as whole words; None if no or several match."""
    texts = [choice_text(choice, index) for index, choice in enumerate(choices)]
    key, words = text_key(text), f" {_words(text)} "
    for matches in (
        [index for index, choice in enumerate(texts) if _words(choice) and text_key(choice) == key],
        [index for index, choice in enumerate(texts) if _words(choice) and f" {_words(choice)} " in words],
    ):
        if len(matches) == 1:
            return string.ascii_uppercase[matches[0] % 26]
    return None


def _words(text: str) -> str:
    return _NOT_WORD.sub(" ", text.lower()).strip()
