"""The training job end to end on CPU: DeepSpeed ZeRO-2 over gloo, killed mid-run and resumed from the store."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import DATA_PREFIX, write_datasets
from lema.records import CorrectionExample, CotExample
from lema.store import LocalStore
from lema.training.checkpoints import CheckpointStore
from lema.training.data import DataError, load_training_data
from lema.training.job import MANIFEST_FILE

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 24
EVERY_STEPS = 4


def _config(tmp_path: Path, model_dir: Path) -> Path:
    config = {
        "run": {"name": "tiny", "work_dir": str(tmp_path / "work")},
        "model": {"name": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prefix": DATA_PREFIX, "max_length": 512},
        "optim": {"max_steps": MAX_STEPS, "batch_size": 2, "logging_steps": 1, "learning_rate": 1e-3},
        "deepspeed": {"config": str(REPO / "training_job" / "ds_zero2.json")},
        "checkpoints": {"prefix": "train/tiny", "every_steps": EVERY_STEPS, "keep": 2, "merge_weights": True},
        "store": {"root": str(tmp_path / "store")},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _schedule(learning_rate: float, warmup_ratio: float) -> list[float]:
    """The learning rate of each step of an uninterrupted run: cosine with linear warmup."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    warmup = math.ceil(MAX_STEPS * warmup_ratio)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=MAX_STEPS)
    rates = []
    for _ in range(MAX_STEPS):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def _kill_everything(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher and every rank, as a pod eviction would (torchrun puts ranks in sessions of their own)."""
    tree = psutil.Process(process.pid)
    for member in [tree, *tree.children(recursive=True)]:
        member.kill()
    process.wait()


def _train(config: Path, processes: int) -> subprocess.Popen[bytes]:
    """One process through the container's entrypoint; several through `lema train --nproc` (torchrun)."""
    command = [sys.executable, "training_job/train.py", "--config", str(config)]
    if processes > 1:
        command = [sys.executable, "-m", "lema.cli", "train", "--config", str(config), "--nproc", str(processes)]
    # A session of its own, so the kill reaches torchrun's ranks too.
    return subprocess.Popen(command, cwd=REPO)


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
    _kill_everything(first)
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
    assert json.loads(store.get_bytes("train/tiny/merged/config.json"))["hidden_size"] == 64
    assert manifest["merged"] == store.uri("train/tiny/merged")
    # The newest checkpoints are kept, each with DeepSpeed's per-rank optimizer shards and the LR scheduler; the
    # last step needs none, the adapter is its result.
    last = MAX_STEPS - EVERY_STEPS
    assert checkpoints.complete_steps() == [last - EVERY_STEPS, last]
    final = f"train/tiny/checkpoints/checkpoint-{last}/"
    names = [key[len(final) :] for key in store.list(final)]
    assert sum("optim_states" in name for name in names) == processes
    assert "scheduler.pt" in names
    state = json.loads(store.get_bytes(final + "trainer_state.json"))
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps == list(range(1, last + 1))
    # The learning rate follows one uninterrupted schedule: the scheduler state came back with the checkpoint.
    logged_rates = [entry["learning_rate"] for entry in state["log_history"] if "loss" in entry]
    assert logged_rates == pytest.approx(_schedule(learning_rate=1e-3, warmup_ratio=0.03)[:last])


def test_bad_dataset_line_is_named(
    tmp_path: Path, gsm8k_examples: tuple[list[CotExample], list[CorrectionExample]]
) -> None:
    store = LocalStore(tmp_path)
    cot, corrections = gsm8k_examples
    write_datasets(store, "bad", cot[:2], corrections[:2])
    store.put_bytes("bad/corrections.jsonl", store.get_bytes("bad/corrections.jsonl") + b'{"id": "x"}\n')
    from lema.training.config import DataSettings

    with pytest.raises(DataError, match=r"corrections\.jsonl:3: not a CorrectionExample: question_id: Field required"):
        load_training_data(store, DataSettings(prefix="bad"), seed=0)
