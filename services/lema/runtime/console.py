"""Terminal presentation of an embedded run: a progress bar per stage with rates, and the summary table.

Where stderr is not a terminal (CI, `nohup`, Kubernetes logs) bars would print nothing useful, so one plain
progress line is written at intervals instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from lema.runtime.embedded import ProgressHook

STAGES = ("sample", "check", "correct", "verify", "evolve")


PROGRESS_LINE_INTERVAL_S = 30.0


@contextmanager
def stage_progress(console: Console, line_interval_s: float = PROGRESS_LINE_INTERVAL_S) -> Iterator[ProgressHook]:
    """Live bars on a terminal; elsewhere a line such as `progress 0:01:30 sample 12/24 check 6/12` every
    `line_interval_s` seconds, and a last one when the stages finish."""
    if not console.is_terminal:
        with _progress_lines(console, line_interval_s) as update:
            yield update
        return
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


@contextmanager
def _progress_lines(console: Console, interval_s: float) -> Iterator[ProgressHook]:
    start = time.monotonic()
    counts = {stage: [0, 0] for stage in STAGES}  # done, total (done + still pending)
    last = start

    def line() -> None:
        elapsed = int(time.monotonic() - start)
        stages = " ".join(f"{s} {done}/{total}" for s, (done, total) in counts.items() if total)
        console.file.write(f"progress {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} {stages}\n")
        console.file.flush()

    def update(stage: str, done: int, pending: int) -> None:
        nonlocal last
        if stage not in counts:
            return
        counts[stage][0] += done
        counts[stage][1] = counts[stage][0] + pending
        if time.monotonic() - last >= interval_s:
            last = time.monotonic()
            line()

    yield update
    line()


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
