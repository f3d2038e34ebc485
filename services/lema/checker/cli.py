"""`lema check`: check a JSONL file of responses against gold answers.

Input lines are `{"response": str, "gold": str, "choices": [str, ...]}` (choices for mcq only); output lines are
`{"correct": bool, "predicted": str | null, "reason": str}` in input order. The whole input is validated before
anything is checked, so a malformed line stops the command before any output is written (exit code 2), unless
`--skip-bad` turns it into a `"reason": "bad_input"` line with an `"error"` naming the problem.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TextIO

import typer

if TYPE_CHECKING:
    from lema.checker import CheckItem
    from lema.records import Task

_BATCH = 256  # items handed to check_batch at once: output appears as it is decided


class BadLine(ValueError):
    """An input line that is not a valid check request; the message names the file, line and field."""


class _JsonNumber(str):
    """A JSON number kept as written: '1e16' and '0.00001' stay exact, and no integer of any length is converted."""


def _no_constant(name: str) -> None:
    raise BadLine(f"{name} is not a number any answer can equal")


def check_command(
    task: Annotated[Literal["gsm8k", "math", "mcq"], typer.Option("--task", help="Answer format.")],
    input_path: Annotated[
        Path,
        typer.Option("--input", "-i", exists=True, dir_okay=False, help='JSONL: {"response", "gold", "choices"?}.'),
    ],
    output_path: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Result JSONL; stdout when omitted.")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Report malformed lines in the output instead of stopping.")
    ] = False,
    patterns: Annotated[
        list[str] | None,
        typer.Option("--pattern", help="Extra answer regex, first group = the answer (repeatable)."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a setting: --set checker.timeout_s=2.")
    ] = None,
) -> None:
    """Check responses against gold answers (GSM8K numbers, MATH LaTeX, multiple choice)."""
    from lema.checker import prestart
    from lema.checker.pool import WorkerTemplate

    # LaTeX answers need the symbolic workers, whose start (importing sympy and Math-Verify) is the slowest part of a
    # one-off command: it runs on another core while this process loads its settings and reads the input. The `lema`
    # command started it before parsing the command line; `lema.cli` called directly starts it here.
    template = prestart.take() or (WorkerTemplate(warm_up=False) if task == "math" else None)
    from lema.checker import Checker, CheckItem
    from lema.config import LemaSettings, load_settings

    try:
        settings = load_settings(config, overrides or [], LemaSettings)
        requests = list(read_requests(input_path, task))
        if not skip_bad:
            bad = next((request for request in requests if isinstance(request, BadLine)), None)
            if bad is not None:
                raise bad
        checker = Checker(settings.checker, patterns=patterns or (), template=template)
    except BaseException as exc:
        if template is not None:
            template.stop()
        if not isinstance(exc, ValueError):
            raise
        typer.echo(f"error: {exc}", err=True)  # a bad setting, input line or answer pattern
        raise typer.Exit(2) from None
    if not requests:
        typer.echo(f"{input_path}: no check requests (the file has no non-blank lines)", err=True)
    skipped = [request for request in requests if isinstance(request, BadLine)]
    with checker, _output(output_path) as output:
        for start in range(0, len(requests), _BATCH):
            chunk = requests[start : start + _BATCH]
            items = [request for request in chunk if isinstance(request, CheckItem)]
            results = iter(checker.check_batch(items))
            for request in chunk:
                if isinstance(request, BadLine):
                    line: dict[str, Any] = {
                        "correct": False,
                        "predicted": None,
                        "reason": "bad_input",
                        "error": str(request),
                    }
                else:
                    result = next(results)
                    line = {"correct": result.correct, "predicted": result.predicted, "reason": result.reason}
                output.write(_json_line(line))
            output.flush()
    if skipped:
        typer.echo(f"skipped {len(skipped)} bad line(s) of {len(requests)}; first: {skipped[0]}", err=True)


def _json_line(line: dict[str, Any]) -> str:
    """One output line; a lone surrogate from the input (valid JSON, not encodable text) is written escaped."""
    text = json.dumps(line, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(line)
    return text + "\n"


def read_requests(path: Path, task: Task) -> Iterator[CheckItem | BadLine]:
    """Each non-blank line as a `CheckItem`, or as a `BadLine` saying what is wrong with it."""
    from lema.checker import CheckItem

    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark may open the file
            except UnicodeDecodeError as exc:
                yield BadLine(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                fields = _fields(text, task, where)
            except BadLine as exc:
                yield exc
                continue
            yield CheckItem(fields["response"], fields["gold"], task, fields["choices"])


def _fields(text: str, task: Task, where: str) -> dict[str, Any]:
    try:
        row = json.loads(text, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadLine(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except BadLine as exc:
        raise BadLine(f"{where}: {exc}") from None
    if not isinstance(row, dict):
        raise BadLine(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in ("response", "gold"):
        if name not in row:
            raise BadLine(f"{where}: missing field {name!r}")
        value = row[name]
        if isinstance(value, _JsonNumber) and name == "gold":
            row[name] = str.__str__(value)  # a numeric gold such as 18 is clear enough, kept as written
        elif isinstance(value, _JsonNumber) or not isinstance(value, str):
            kind = "number" if isinstance(value, _JsonNumber) else type(value).__name__
            raise BadLine(f"{where}: field {name!r}: expected a string, got {kind}")
    choices = row.get("choices", [])
    if not isinstance(choices, list) or not all(
        isinstance(choice, str) and not isinstance(choice, _JsonNumber) for choice in choices
    ):
        raise BadLine(f"{where}: field 'choices': expected a list of strings")
    if choices and task != "mcq":
        raise BadLine(f"{where}: field 'choices' is only for --task mcq (this is --task {task})")
    return {"response": row["response"], "gold": row["gold"], "choices": tuple(choices)}


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """The output file, or stdout (which is left open)."""
    if path is None:
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8") as output:
        yield output
