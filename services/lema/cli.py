"""`lema` command line. Each area registers its commands here; heavy imports stay inside the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="lema: learning from mistakes.")


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show an error's traceback (anywhere on the line).")] = False,
) -> None:
    """lema: learning from mistakes. Errors are one line; add --debug for the traceback."""


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a setting: --set sample.samples_per_model=4."),
]


@app.command("run")
def run_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what run.name holds when the input differs.")
    ] = False,
) -> None:
    """Run the whole LEMA loop in this process; run the same command again to resume after a stop."""
    from rich.console import Console
    from rich.markup import escape

    from lema.config import LemaSettings, load_settings
    from lema.runtime.console import stage_progress, summary_table
    from lema.runtime.embedded import EmbeddedPipeline

    console = Console(stderr=True)
    try:
        settings: LemaSettings = load_settings(config, overrides or [])
        with EmbeddedPipeline(settings, overwrite=overwrite) as pipeline:
            questions = pipeline.load_questions()
            console.print(
                f"[bold]lema run {escape(settings.run.name)}[/]: {len(questions)} questions from "
                f"{escape(settings.input.path)}"
            )
            pipeline.prepare(questions)
            with stage_progress(console) as progress:
                pipeline.progress = progress
                result = pipeline.run(questions)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished LLM calls are journaled; run the same command to resume.")
        raise typer.Exit(130) from None
    Console().print(summary_table(result.summary))
    console.print(f"dataset: {escape(result.store_uri)}/ ({', '.join(k.rsplit('/', 1)[-1] for k in result.keys)})")


# --- command registrations (one line per area; keep module-level imports light) ---
from lema.llm.commands import serve_llm  # noqa: E402

app.command("serve-llm")(serve_llm)
from lema.checker.cli import check_command  # noqa: E402

app.command("check")(check_command)
from lema.training.cli import eval_app, experiment_app, train_app  # noqa: E402

app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(experiment_app, name="experiment")
from lema.runtime.commands import serve_command, submit_command, up_command  # noqa: E402

app.command("serve")(serve_command)
app.command("up")(up_command)
app.command("submit")(submit_command)
from lema.dataset.cli import dataset_app  # noqa: E402

app.add_typer(dataset_app, name="dataset")
from lema.runtime.dlq import app as dlq_app  # noqa: E402

app.add_typer(dlq_app, name="dlq")


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user makes (settings, input, an unreachable or unknown model): one line, never a traceback."""
    from lema.config import ConfigError
    from lema.inputs import InputError
    from lema.llm.base import LLMError

    return ConfigError, InputError, LLMError


# Click's base of usage errors (unknown option, bad value), found through typer, which may vendor its own click.
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def fail(message: str, code: int) -> None:
    """Print `error: message` on one line, unstyled (no markup can swallow a `[...]` in it), and exit."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    # OpenMP threads that spin while waiting stall for minutes when other processes (checker workers, a second
    # model) share the cores; measured here: 116 s spinning vs 8 s passive for the same SmolLM2 generation.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line; the root option only documents it in `lema --help`
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    try:
        code = app(args=args, prog_name="lema", standalone_mode=False)
    except _USAGE_ERROR as exc:
        if debug:
            raise
        fail(f"{exc.format_message()} (see --help)", exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        fail("aborted", 1)
    except user_errors() as exc:
        if debug:
            raise
        fail(f"{exc} (--debug shows the traceback)", 2)
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
