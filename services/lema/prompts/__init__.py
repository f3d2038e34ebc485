"""Versioned prompt templates (YAML files under `templates/`), rendered into chat messages.

A template names its version; the `name@version` string is stored on every record a prompt produced, so a dataset
always says which prompt made each line. Placeholders are `{{name}}`, which never collides with LaTeX's `$` and braces.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from lema.llm.base import ChatMessage
from lema.records import Task

TEMPLATES_DIR = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class FewShot:
    user: str
    assistant: str


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    user: str
    examples: tuple[FewShot, ...] = ()
    hint: str = ""
    source: str = ""

    @property
    def version_tag(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, **fields: str) -> tuple[ChatMessage, ...]:
        """System message, few-shot turns, then the user turn with every `{{placeholder}}` filled."""
        return self.conversation(fill(self.user, fields, where=self.source))

    def conversation(self, user: str, *, with_examples: bool = True) -> tuple[ChatMessage, ...]:
        """System message, few-shot turns (unless left out), then `user`: the one framing a model sees for this
        template, whether it samples, is evaluated (`lema eval`) or is fine-tuned on the result."""
        messages = [ChatMessage("system", self.system)]
        for shot in self.examples if with_examples else ():
            messages += [ChatMessage("user", shot.user), ChatMessage("assistant", shot.assistant)]
        messages.append(ChatMessage("user", user))
        return tuple(messages)

    def render_hint(self, **fields: str) -> str:
        return fill(self.hint, fields, where=self.source) if self.hint else ""


def fill(text: str, fields: dict[str, str], *, where: str) -> str:
    missing = sorted(set(_PLACEHOLDER.findall(text)) - fields.keys())
    if missing:
        raise PromptError(f"{where}: no value for placeholder(s) {missing}")
    return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], text).strip()


def _template_file(kind: str, task: Task | None, directory: Path) -> tuple[Path, os.stat_result]:
    """The first template file that exists, with its stat (one per file tried: this runs for every record)."""
    candidates = [directory / f"{kind}-{task}.yaml"] if task else []
    candidates.append(directory / f"{kind}.yaml")
    for path in candidates:
        try:
            found = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(found.st_mode):
            return path, found
    raise PromptError(f"no prompt template for {kind!r} (task {task!r}) in {directory}")


def load_prompt(kind: str, task: Task | None = None, directory: Path | None = None) -> PromptTemplate:
    """The template for `kind` ('sample', 'correct', 'evolve'), task-specific when one exists.

    Parsed once per version of the file: stages ask for it for every record, and parsing the YAML cost a replayed
    sample stage seven times what everything else in it did."""
    path, found = _template_file(kind, task, directory or TEMPLATES_DIR)
    return _parse_template(path, found.st_mtime_ns, found.st_size)


@functools.lru_cache(maxsize=64)
def _parse_template(path: Path, _mtime_ns: int, _size: int) -> PromptTemplate:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return PromptTemplate(
            name=str(raw["name"]),
            version=int(raw["version"]),
            system=str(raw["system"]).strip(),
            user=str(raw["user"]),
            examples=tuple(
                FewShot(str(e["user"]).strip(), str(e["assistant"]).strip()) for e in raw.get("examples", [])
            ),
            hint=str(raw.get("hint", "")),
            source=str(path),
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise PromptError(f"{path}: invalid prompt template: {exc}") from exc


def format_choices(choices: tuple[str, ...]) -> str:
    return "\n".join(f"({chr(ord('A') + i)}) {choice}" for i, choice in enumerate(choices))
