"""Terminal presentation of an embedded run: a progress bar per stage with rates, and the summary table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from lema.runtime.embedded import ProgressHook

STAGES = ("sample", "check", "correct", "verify", "evolve")


@contextmanager
def stage_progress(console: Console) -> Iterator[ProgressHook]:
    columns = (
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.2f}/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, TaskID] = {s: progress.add_task(s, total=0, rate=0.0) for s in STAGES}

        def update(stage: str, done: int, pending: int) -> None:
            if stage not in tasks:
                return
            task = tasks[stage]
            progress.update(task, advance=done)
            state = progress.tasks[task]
            progress.update(task, total=state.completed + pending, rate=state.completed / max(state.elapsed or 0, 1e-9))

        yield update


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"LEMA run {summary.get('run', '')}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    questions = summary["questions"]
    stages = summary["stages"]
    rows = [
        ("questions (input / evolved)", f"{questions['input']} / {questions['evolved']}"),
        ("paths sampled", stages["sample"]["paths"]),
        ("paths correct / wrong", f"{stages['check']['correct']} / {stages['check']['wrong']}"),
        ("corrections parsed / verified", f"{stages['correct']['parsed']} / {stages['verify']['verified']}"),
        ("correction yield", summary["correction_yield"]),
        ("cot examples (gold)", f"{summary['dataset']['cot']} ({summary['dataset']['cot_gold']})"),
        ("correction examples", summary["dataset"]["corrections"]),
    ]
    rows += [(f"accuracy {model}", f"{s['accuracy']:.1%} of {s['paths']}") for model, s in summary["samplers"].items()]
    rows += [(f"drop {reason}", count) for reason, count in summary["drops"].items()]
    rows += [
        (f"tokens {name} (prompt / generated)", f"{u['prompt_tokens']} / {u['completion_tokens']}")
        for name, u in summary.get("llms", {}).items()
    ]
    rows.append(("seconds", summary.get("timings_s", {}).get("total")))
    for what, value in rows:
        table.add_row(what, "-" if value is None else str(value))
    return table
