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
import torch
import yaml

from conftest import DATA_PREFIX, write_datasets
from lema.records import CorrectionExample, CotExample
from lema.store import LocalStore
from lema.training.checkpoints import (
    CheckpointStore,
    RunMismatchError,
    describe_change,
    fingerprint_digest,
    run_fingerprint,
)
from lema.training.config import TrainRunSettings, TrainSettings
from lema.training.data import DataError, load_training_data
from lema.training.job import MANIFEST_FILE, run_prefix

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
    # Only trainable state: the module state holds LoRA tensors, not the tied embedding DeepSpeed keeps otherwise.
    (model_states,) = [name for name in names if name.endswith("model_states.pt")]
    store.download_file(final + model_states, tmp_path / "model_states.pt")
    module = torch.load(tmp_path / "model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert module and all(".lora_" in name for name in module), sorted(module)
    # Local copies go once they are in the store.
    assert not list((tmp_path / "work").glob("checkpoints/checkpoint-*"))
    assert not (tmp_path / "work" / "adapter").exists()
    state = json.loads(store.get_bytes(final + "trainer_state.json"))
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps == list(range(1, last + 1))
    # The learning rate follows one uninterrupted schedule: the scheduler state came back with the checkpoint.
    logged_rates = [entry["learning_rate"] for entry in state["log_history"] if "loss" in entry]
    assert logged_rates == pytest.approx(_schedule(learning_rate=1e-3, warmup_ratio=0.03)[:last])
    assert manifest["fingerprint"] == checkpoints.fingerprint(last)
    assert manifest["fingerprint"]["world_size"] == processes

    # The same prefix with other data is another run: refused in one line, nothing of the finished run touched.
    # (Once is enough: the check runs before any rank trains; another world size is refused the same way, below.)
    if processes == 1:
        command = [sys.executable, "-m", "lema.cli", "train", "--config", str(config), "--set", "data.cot_only=true"]
        changed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        assert changed.returncode == 2
        assert "holds a run with other settings (data.cot_only: false -> true; " in changed.stderr
        assert "use another checkpoints.prefix, or --new-run" in changed.stderr
        assert json.loads(store.get_bytes(f"train/tiny/{MANIFEST_FILE}")) == manifest


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


def _fingerprinted_checkpoint(store: LocalStore, prefix: str, fingerprint: dict[str, object]) -> None:
    checkpoints = CheckpointStore(store, prefix)
    store.put_bytes(f"{prefix}/checkpoints/checkpoint-4/adapter_model.safetensors", b"weights")
    checkpoints.put_fingerprint(4, fingerprint)
    checkpoints.mark_complete(4)


def test_a_changed_run_starts_fresh_beside_the_old_one_when_asked(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    settings = TrainSettings.model_validate({"checkpoints": {"prefix": "train/x", "on_change": "new_run"}})
    old = run_fingerprint(settings, None, {"d/cot.jsonl": "aa"}, world_size=1)
    new = run_fingerprint(settings, None, {"d/cot.jsonl": "bb"}, world_size=1)
    assert describe_change(old, new) == 'dataset.d/cot.jsonl: "aa" -> "bb"'
    _fingerprinted_checkpoint(store, "train/x", old)

    assert run_prefix(store, settings, old) == "train/x"
    fresh = run_prefix(store, settings, new)
    assert fresh == f"train/x-{fingerprint_digest(new)}"
    # A rerun of the new settings finds its own run there and resumes it; the old run is left alone.
    _fingerprinted_checkpoint(store, fresh, new)
    assert run_prefix(store, settings, new) == fresh
    assert CheckpointStore(store, "train/x").fingerprint(4) == old


def test_another_world_size_is_another_run(tmp_path: Path) -> None:
    """ZeRO shards optimizer state by rank: a checkpoint of 1 rank cannot be resumed by 2 (DeepSpeed would fail with
    a raw error on every retry); the job says so instead."""
    store = LocalStore(tmp_path)
    settings = TrainSettings.model_validate({"checkpoints": {"prefix": "train/z"}})
    _fingerprinted_checkpoint(store, "train/z", run_fingerprint(settings, None, {}, world_size=1))
    with pytest.raises(RunMismatchError, match=r"\(world_size: 1 -> 2\)"):
        run_prefix(store, settings, run_fingerprint(settings, None, {}, world_size=2))


def test_a_finished_run_is_not_overwritten_by_another(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    settings = TrainSettings.model_validate({"checkpoints": {"prefix": "train/y"}})
    finished = run_fingerprint(settings, None, {}, world_size=1)
    store.put_bytes(f"train/y/{MANIFEST_FILE}", json.dumps({"fingerprint": finished}).encode())
    other_seed = run_fingerprint(settings.model_copy(update={"run": TrainRunSettings(seed=7)}), None, {}, 1)
    with pytest.raises(RunMismatchError, match=r"train/y holds a run with other settings \(run\.seed: 1234 -> 7\)"):
        run_prefix(store, settings, other_seed)
