"""The symbolic workers' template for `lema check --task math`, started before the command line is parsed.

The template's start (importing sympy and Math-Verify) is the slowest part of a one-off check, and the command-line
libraries (typer, which imports pydantic) take another 0.2-0.9 s to import: started first, the template imports on
another core meanwhile. The command takes it with `take()`; if the command never does (a usage error), the template
exits when this process does, as it always does when its socket closes.
"""

from __future__ import annotations

from collections.abc import Sequence

from lema.checker.pool import WorkerTemplate

_started: list[WorkerTemplate] = []


def start_for(args: Sequence[str]) -> None:
    """Start the template when `args` (the words after `lema`) ask `lema check` for LaTeX answers."""
    words = [word for word in args if word != "--debug"]
    if words[:1] == ["check"] and _task(words) == "math":
        _started.append(WorkerTemplate(warm_up=False))


def take() -> WorkerTemplate | None:
    """The template `start_for` started, now the caller's to stop, or None."""
    return _started.pop() if _started else None


def _task(words: Sequence[str]) -> str | None:
    """The value of the last `--task` option, as the command-line parser reads it."""
    task = None
    for index, word in enumerate(words):
        if word == "--task" and index + 1 < len(words):
            task = words[index + 1]
        elif word.startswith("--task="):
            task = word.partition("=")[2]
    return task
