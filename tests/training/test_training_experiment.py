"""`lema experiment lema-vs-cot` end to end at tiny size on CPU: two arms trained, evaluated and compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import DATA_PREFIX, write_datasets
from lema.cli import app
from lema.records import CorrectionExample, CotExample
from lema.store import LocalStore
from lema.training.evaluate import read_results
from lema.training.job import MANIFEST_FILE


def _config(tmp_path: Path, model_dir: Path, max_steps: int) -> Path:
    config = {
        "run": {"name": "tiny-experiment", "seed": 5, "work_dir": str(tmp_path / "work")},
        "model": {"name": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prefix": DATA_PREFIX, "max_length": 384},
        "optim": {"max_steps": max_steps, "batch_size": 2, "logging_steps": 1, "learning_rate": 1e-3},
        "deepspeed": {"config": None},
        "checkpoints": {"prefix": "experiment/tiny", "every_steps": 100},
        "store": {"root": str(tmp_path / "store")},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_lema_vs_cot_trains_both_arms_alike_and_compares_them_on_the_same_questions(
    tmp_path: Path,
    tiny_llama_dir: Path,
    gsm8k_examples: tuple[list[CotExample], list[CorrectionExample]],
    gsm8k_test_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEMA_CACHE_DIR", str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")
    write_datasets(store, DATA_PREFIX, *gsm8k_examples)
    output = tmp_path / "experiment"
    result = CliRunner().invoke(
        app,
        ["experiment", "lema-vs-cot", "--config", str(_config(tmp_path, tiny_llama_dir, max_steps=2)),
         "--data", str(gsm8k_test_file), "--limit", "4", "--max-tokens", "4", "--output", str(output)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "lema - cot: difference " in result.output and "on 4 common questions" in result.output

    cot = json.loads(store.get_bytes(f"experiment/tiny/cot/{MANIFEST_FILE}"))
    lema = json.loads(store.get_bytes(f"experiment/tiny/lema/{MANIFEST_FILE}"))
    # Same base, seed and budget; only the data mix differs (and with it the dataset files read).
    changed = {k for k in cot["fingerprint"] if cot["fingerprint"][k] != lema["fingerprint"].get(k)}
    assert changed == {"data.cot_only"}
    assert set(lema["fingerprint"]) - set(cot["fingerprint"]) == {f"dataset.{DATA_PREFIX}/corrections.jsonl"}
    assert cot["metrics"]["global_step"] == lema["metrics"]["global_step"] == 2

    summary = json.loads((output / "experiment.json").read_text())
    ids = [[r.question_id for r in read_results(Path(summary["arms"][arm]["results"]))] for arm in ("cot", "lema")]
    assert ids[0] == ids[1] and len(ids[0]) == 4
    comparison = summary["lema_minus_cot"]
    assert comparison["common"] == 4
    assert comparison["low"] <= comparison["difference"] <= comparison["high"]
    assert comparison["high"] - comparison["low"] > 0.1, "four questions cannot settle anything"


def test_an_epoch_budget_is_refused(tmp_path: Path, tiny_llama_dir: Path, gsm8k_test_file: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["experiment", "lema-vs-cot", "--config", str(_config(tmp_path, tiny_llama_dir, max_steps=-1)),
         "--data", str(gsm8k_test_file)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "optim.max_steps must be set" in result.output
