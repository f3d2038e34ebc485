"""The training job end to end on CPU: DeepSpeed ZeRO-2 over gloo, killed mid-run and resumed from the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA_PREFIX, write_datasets

from lema.records import CorrectionExample, CotExample
from lema.store import LocalStore
from lema.training.checkpoints import CheckpointStore
from lema.training.data import DataError, load_training_data
from lema.training.job import MANIFEST_FILE

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 40
EVERY_STEPS = 4


def _config(tmp_path: Path, model_dir: Path) -> Path:
    config = {
        "run": {"name": "tiny", "work_dir": str(tmp_path / "work")},
        "model": {"name": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prefix": DATA_PREFIX, "max_length": 192},
        "optim": {"max_steps": MAX_STEPS, "batch_size": 2, "logging_steps": 1, "learning_rate": 1e-3},
        "deepspeed": {"config": str(REPO / "training_job" / "ds_zero2.json")},
        "checkpoints": {"prefix": "train/tiny", "every_steps": EVERY_STEPS, "keep": 2},
        "store": {"root": str(tmp_path / "store")},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, processes: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "lema.cli", "train", "--config", str(config), "--nproc", str(processes)]
    # A session of its own, so the kill reaches torchrun's ranks too.
    return subprocess.Popen(command, cwd=REPO, start_new_session=True)


@pytest.mark.parametrize("processes", [1, 2])
def test_killed_job_resumes_from_the_store_and_finishes(
    tmp_path: Path,
    tiny_llama_dir: Path,
    gsm8k_examples: tuple[list[CotExample], list[CorrectionExample]],
    processes: int,
) -> None:
    store = LocalStore(tmp_path / "store")
    write_datasets(store, DATA_PREFIX, *gsm8k_examples)
    checkpoints = CheckpointStore(store, "train/tiny")
    config = _config(tmp_path, tiny_llama_dir)

    first = _train(config, processes)
    deadline = time.monotonic() + 300
    while not checkpoints.complete_steps() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert checkpoints.complete_steps(), "no checkpoint reached the store before the kill"
    assert not store.exists(f"train/tiny/{MANIFEST_FILE}"), "the job finished before it could be killed"
    # Work started after the last complete checkpoint is redone: the resumed job starts from that checkpoint.
    killed_at = checkpoints.complete_steps()[-1]

    second = _train(config, processes)
    assert second.wait(timeout=600) == 0

    manifest = json.loads(store.get_bytes(f"train/tiny/{MANIFEST_FILE}"))
    assert manifest["resumed_from"] == f"checkpoint-{killed_at}"
    assert manifest["metrics"]["global_step"] == MAX_STEPS
    assert set(manifest["datasets_sha256"]) == {f"{DATA_PREFIX}/cot.jsonl", f"{DATA_PREFIX}/corrections.jsonl"}
    assert manifest["config"]["optim"]["max_steps"] == MAX_STEPS
    assert store.exists("train/tiny/adapter/adapter_model.safetensors")
    assert json.loads(store.get_bytes("train/tiny/adapter/adapter_config.json"))["r"] == 4
    # Only the newest checkpoints are kept, each with DeepSpeed's per-rank optimizer shards and the LR scheduler.
    assert checkpoints.complete_steps() == [MAX_STEPS - EVERY_STEPS, MAX_STEPS]
    final = f"train/tiny/checkpoints/checkpoint-{MAX_STEPS}/"
    names = [key[len(final) :] for key in store.list(final)]
    assert sum("optim_states" in name for name in names) == processes
    assert "scheduler.pt" in names
    state = json.loads(store.get_bytes(final + "trainer_state.json"))
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps == list(range(1, MAX_STEPS + 1))


def test_bad_dataset_line_is_named(tmp_path: Path, gsm8k_examples: tuple[list[CotExample], list[CorrectionExample]]) -> None:
    store = LocalStore(tmp_path)
    cot, corrections = gsm8k_examples
    write_datasets(store, "bad", cot[:2], corrections[:2])
    store.put_bytes("bad/corrections.jsonl", store.get_bytes("bad/corrections.jsonl") + b'{"id": "x"}\n')
    from lema.training.config import DataSettings

    with pytest.raises(DataError, match=r"corrections\.jsonl:3: not a CorrectionExample: question_id: Field required"):
        load_training_data(store, DataSettings(prefix="bad"), seed=0)
