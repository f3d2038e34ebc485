"""`lema dataset export|stats|compact|vacuum RUN`: read and maintain a run's dataset table in the artifact store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lema.config import LemaSettings
    from lema.dataset.base import DatasetSink

dataset_app = typer.Typer(no_args_is_help=True, help="Export, inspect and maintain a run's dataset table.")

RunArgument = Annotated[str, typer.Argument(help="The run name (run.name): the table is <store>/<RUN>/table.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file (for the store).")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a setting: --set store.root=runs.")]


def _open(run: str, config: Path | None, overrides: list[str] | None) -> tuple[LemaSettings, DatasetSink]:
    from lema.config import ConfigError, load_settings
    from lema.dataset import DatasetSinkError, create_sink
    from lema.store.base import StoreError

    try:
        settings: LemaSettings = load_settings(config, [*(overrides or []), f"run.name={run}"])
        return settings, create_sink(settings, writer="cli", create=False)
    except (ConfigError, DatasetSinkError, StoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@dataset_app.command("export")
def export_command(
    run: RunArgument,
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", "-f", help="jsonl | parquet | hf (repeatable); default dataset.formats."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write into this local directory instead of <store>/<RUN>/.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write the files `lema run` writes (cot.jsonl, corrections.jsonl, run_summary.json; Parquet/HF on request),
    each record once, sorted by id."""
    from lema.dataset.reader import export
    from lema.store import LocalStore, create_store

    settings, sink = _open(run, config, overrides)
    unknown = sorted(set(formats or ()) - {"jsonl", "parquet", "hf"})
    if unknown:
        typer.echo(f"error: --format: unknown {unknown}; choose from jsonl, parquet, hf", err=True)
        raise typer.Exit(2)
    store = LocalStore(out) if out is not None else create_store(settings.store)
    prefix = run if out is None else ""
    keys = export(sink, run, store, prefix, settings.dataset, formats=formats or None)  # type: ignore[arg-type]
    for key in keys:
        typer.echo(store.uri(key))


@dataset_app.command("stats")
def stats_command(run: RunArgument, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Counts per stage, per-sampler accuracy, correction yield and drop reasons, read from the table."""
    from rich.console import Console

    from lema.dataset.reader import summary
    from lema.runtime.console import summary_table

    _, sink = _open(run, config, overrides)
    counts = summary(sink, run)
    del counts["llms"]  # the table counts records per model, not the token usage the table's rows would show
    Console().print(summary_table(counts))


@dataset_app.command("compact")
def compact_command(run: RunArgument, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Merge small files (safe while writers run), then remove duplicate rows (a kind still being appended to is
    left for the next compaction; reads remove duplicates anyway)."""
    from lema.dataset.reader import deduplicate

    _, sink = _open(run, config, overrides)
    merged = sink.compact()
    dedup = deduplicate(sink)
    report = {
        "files_removed": merged.get("numFilesRemoved"),
        "files_added": merged.get("numFilesAdded"),
        "duplicates_removed": dedup.removed,
        "skipped_busy": dedup.skipped,
    }
    typer.echo(json.dumps(report))


@dataset_app.command("vacuum")
def vacuum_command(
    run: RunArgument,
    retention_hours: Annotated[
        int, typer.Option(min=1, help="Keep unreferenced files younger than this (longer than any commit takes).")
    ] = 168,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Delete files no longer referenced by the table (replaced by compaction, or left by a failed commit)."""
    _, sink = _open(run, config, overrides)
    removed = sink.vacuum(retention_hours)
    typer.echo(f"removed {len(removed)} file(s)")
