"""`lema train` (run here), `lema train submit` (run in a cluster) and `lema eval`. Heavy imports stay inside."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lema.training.config import TrainSettings

train_app = typer.Typer(no_args_is_help=False, help="Fine-tune on the CoT and correction datasets.")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Training YAML (see training_job/example.yaml).")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a field: KEY=VALUE (repeatable).")]


def _settings(config: Path, overrides: list[str] | None) -> TrainSettings:
    from lema.config import ConfigError
    from lema.training.config import load_train_settings

    try:
        return load_train_settings(config, overrides or [])
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config/--set") from exc


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training YAML.")] = None,
    overrides: SetOption = None,
    nproc: Annotated[int, typer.Option(help="Processes on this machine (torchrun; gloo on CPU).", min=1)] = 1,
    new_run: Annotated[
        bool,
        typer.Option("--new-run", help="If checkpoints.prefix holds a run with other settings, start fresh beside it."),
    ] = False,
) -> None:
    """Train here: `lema train --config FILE` (CPU is fine for tiny models)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise typer.BadParameter("lema train needs --config FILE (or a sub-command: submit)", param_hint="--config")
    overrides = [*(overrides or []), *(["checkpoints.on_change=new_run"] if new_run else [])]
    _settings(config, overrides)  # a bad config fails here, once, rather than in every rank
    from lema.training.job import launch_local, main

    if nproc > 1:
        raise typer.Exit(launch_local(config, overrides, nproc))
    raise typer.Exit(main(["--config", str(config), *(arg for item in overrides for arg in ("--set", item))]))


@train_app.command("submit")
def submit(
    config: ConfigOption,
    overrides: SetOption = None,
    follow: Annotated[bool, typer.Option(help="Wait for the job to succeed or fail.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the manifests instead; no cluster needed.")] = False,
) -> None:
    """Create the training Job (or PyTorchJob) in the cluster and follow it to a terminal state."""
    from lema.training.launcher import SubmitError, kubernetes_client, render_manifests, submit_job

    settings = _settings(config, overrides)
    try:
        if dry_run:
            typer.echo(render_manifests(settings), nl=False)
            return
        state = submit_job(settings, kubernetes_client(), follow=follow)
    except SubmitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    name = f"{settings.submit.kind} {settings.submit.namespace}/{settings.submit.name}"
    typer.echo(f"{name}: {state or 'submitted'}")
    if state == "Failed":
        raise typer.Exit(1)


class EvalBackend(StrEnum):
    transformers = "transformers"
    vllm = "vllm"
    openai = "openai"


eval_app = typer.Typer(no_args_is_help=False, help="Greedy accuracy of a model (and adapter) on a question file.")


@eval_app.callback(invoke_without_command=True)
def evaluate_model(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option(help="Base model: a Hugging Face directory, 'smollm2-135m', or a served name.")
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="A PEFT adapter directory trained from --model.")] = None,
    data: Annotated[Path | None, typer.Option(help="Questions (GSM8K / MATH / lema JSONL).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N questions.", min=1)] = None,
    output: Annotated[Path, typer.Option(help="Per-item results (JSONL).")] = Path("runs/eval/results.jsonl"),
    baseline: Annotated[Path | None, typer.Option(help="Results of an earlier run to compare against.")] = None,
    backend: Annotated[EvalBackend, typer.Option(help="LLM backend.")] = EvalBackend.transformers,
    base_url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible server (implies --backend openai), e.g. vLLM's.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A pipeline config; use with --llm.")] = None,
    llm: Annotated[str | None, typer.Option(help="Evaluate this entry of the config's `llms` table.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    device: str = "cpu",
) -> None:
    """Evaluate: `lema eval --model M [--adapter A] --data FILE`, or any configured LLM: `--config C --llm NAME`,
    or a server: `--base-url URL --model NAME`; compare runs: `lema eval compare A B`."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        raise typer.BadParameter("lema eval needs --data (or a sub-command: compare)", param_hint="--data")
    from lema.config import ConfigError
    from lema.inputs import load_questions
    from lema.llm.factory import check_reachable, create_backend
    from lema.training.evaluate import (
        EvalError,
        accuracy,
        compare,
        eval_llm_settings,
        evaluate,
        read_results,
        write_results,
    )

    try:
        settings = eval_llm_settings(
            model=model, adapter=adapter, backend=backend.value, base_url=base_url, config=config, llm=llm,
            overrides={"batch_size": batch_size, "device": device},
        )  # fmt: skip
    except (EvalError, ConfigError) as exc:
        raise typer.BadParameter(str(exc)) from None
    questions = load_questions(data, limit=limit)
    check_reachable(settings)
    llm_backend = create_backend(settings)
    try:
        results = evaluate(llm_backend, questions, max_tokens)
    finally:
        llm_backend.close()
    write_results(output, results)
    name = f"{model or settings.model}{f' + {adapter}' if adapter else ''} ({settings.backend})"
    typer.echo(f"{name} on {data}: {accuracy(results)}")
    typer.echo(f"per-item results: {output}")
    if baseline is not None:
        typer.echo(f"vs {baseline}: {compare(read_results(baseline), results)}")


@eval_app.command("compare")
def compare_runs(
    baseline: Annotated[Path, typer.Argument(help="Per-item results of the baseline run.")],
    candidate: Annotated[Path, typer.Argument(help="Per-item results of the run to compare.")],
) -> None:
    """Accuracy of each run and their paired difference on the questions both answered."""
    from lema.training.evaluate import accuracy, compare, read_results

    before, after = read_results(baseline), read_results(candidate)
    typer.echo(f"{baseline}: {accuracy(before)}")
    typer.echo(f"{candidate}: {accuracy(after)}")
    typer.echo(compare(before, after))


experiment_app = typer.Typer(no_args_is_help=True, help="Controlled comparisons of training recipes.")


@experiment_app.command("lema-vs-cot")
def lema_vs_cot(
    config: ConfigOption,
    data: Annotated[Path, typer.Option(help="Evaluation questions (GSM8K / MATH / lema JSONL).")],
    overrides: SetOption = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N questions.", min=1)] = None,
    output: Annotated[Path, typer.Option(help="Adapters, per-item results, experiment.json.")] = Path(
        "runs/experiment"
    ),
    nproc: Annotated[int, typer.Option(help="Training processes per arm (torchrun; gloo on CPU).", min=1)] = 1,
    backend: Annotated[str, typer.Option(help="Evaluation backend: transformers or vllm.")] = "transformers",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Fine-tune on CoT alone and on CoT + corrections (same data run, seed and steps), evaluate both on the same
    questions, and report the paired difference with its interval: the LEMA paper's main comparison."""
    from lema.training.experiment import ExperimentError, run_experiment

    _settings(config, overrides)
    try:
        summary = run_experiment(
            config, overrides or [], data, output, limit=limit, max_tokens=max_tokens, processes=nproc,
            eval_backend=backend, batch_size=batch_size,
        )  # fmt: skip
    except ExperimentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for name, arm in summary["arms"].items():
        typer.echo(f"{name}: {arm['accuracy']}")
    typer.echo(f"lema - cot: {summary['lema_minus_cot']['text']}")
    typer.echo(f"summary: {output / 'experiment.json'}")
