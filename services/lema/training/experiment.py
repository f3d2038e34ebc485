"""`lema experiment lema-vs-cot`: the paper's main comparison (its Table 1 protocol) from one pipeline run.

Two fine-tunes of the same base model on the same run's data, the same seed and the same number of optimizer steps:
one on the CoT examples alone, one on CoT plus corrections. Both adapters are then evaluated greedily on the same
questions, and the paired difference is reported with its exact McNemar p-value and Tango interval, so a gain can be
told from noise. Each arm trains in a process of its own (as `lema train` would), under its own checkpoint prefix.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lema.store import create_store
from lema.training.config import TrainSettings

log = logging.getLogger(__name__)

ARMS = {"cot": ["data.cot_only=true"], "lema": ["data.cot_only=false"]}
"""Arm name -> the overrides that make it; everything else is the shared config."""


class ExperimentError(ValueError):
    """The experiment cannot be run as configured; the message says what to change."""


@dataclass(frozen=True)
class ArmResult:
    name: str
    checkpoint_prefix: str
    results: Path
    accuracy: str


def arm_overrides(settings: TrainSettings, arm: str) -> list[str]:
    """The `--set` items that turn the shared config into one arm: its data mix and its own store prefix."""
    return [*ARMS[arm], f"checkpoints.prefix={settings.checkpoints.prefix}/{arm}"]


def check_budget(settings: TrainSettings) -> None:
    if settings.optim.max_steps <= 0:
        raise ExperimentError(
            "optim.max_steps must be set: both arms train for the same number of optimizer steps (an epoch budget "
            "would give the larger CoT+corrections set more steps)"
        )


def train_arm(config: Path, overrides: list[str], processes: int) -> None:
    """One arm, in a process of its own (torchrun for several): the job's exit status says whether it trained."""
    from lema.training.job import launch_local

    sets = [arg for item in overrides for arg in ("--set", item)]
    if processes > 1:
        code = launch_local(config, overrides, processes)
    else:
        command = [sys.executable, "-m", "lema.training.job", "--config", str(config), *sets]
        code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise ExperimentError(f"training {' '.join(overrides)} failed (exit status {code}); its log is above")


def fetch_adapter(settings: TrainSettings, prefix: str, target: Path) -> Path:
    store = create_store(settings.store)
    folder = f"{prefix}/adapter/"
    for key in store.list(folder):
        store.download_file(key, target / key[len(folder) :])
    return target


def run_experiment(
    config: Path,
    overrides: list[str],
    data: Path,
    output: Path,
    *,
    limit: int | None,
    max_tokens: int,
    processes: int,
    eval_backend: str,
    batch_size: int,
) -> dict[str, Any]:
    """Train both arms, evaluate both on the same questions, compare them; the summary also goes to
    `output/experiment.json`."""
    from lema.inputs import load_questions
    from lema.llm.factory import create_backend
    from lema.training.config import load_train_settings
    from lema.training.evaluate import accuracy, compare, eval_llm_settings, evaluate, write_results

    settings = load_train_settings(config, overrides)
    check_budget(settings)
    questions = load_questions(data, limit=limit)
    arms: dict[str, ArmResult] = {}
    evaluated = {}
    for arm in ARMS:
        arm_sets = [*overrides, *arm_overrides(settings, arm)]
        prefix = load_train_settings(config, arm_sets).checkpoints.prefix
        log.info("experiment: training arm %r under %s", arm, prefix)
        train_arm(config, arm_sets, processes)
        adapter = fetch_adapter(settings, prefix, output / arm / "adapter")
        llm_settings = eval_llm_settings(
            model=settings.model.name, adapter=adapter, backend=eval_backend, base_url=None, config=None, llm=None,
            overrides={"batch_size": batch_size},
        )  # fmt: skip
        backend = create_backend(llm_settings)
        try:
            evaluated[arm] = evaluate(backend, questions, max_tokens)
        finally:
            backend.close()
        results = output / arm / "results.jsonl"
        write_results(results, evaluated[arm])
        arms[arm] = ArmResult(arm, prefix, results, str(accuracy(evaluated[arm])))
    comparison = compare(evaluated["cot"], evaluated["lema"])
    summary = {
        "data": settings.data.prefix,
        "questions": str(data),
        "evaluated": len(questions),
        "seed": settings.run.seed,
        "max_steps": settings.optim.max_steps,
        "arms": {name: {**asdict(arm), "results": str(arm.results)} for name, arm in arms.items()},
        "lema_minus_cot": {**asdict(comparison), "difference": comparison.difference, "text": str(comparison)},
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "experiment.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
