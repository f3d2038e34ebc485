"""The recipe's parts: data mixing and label masking, a real LoRA fine-tune of SmolLM2, and metrics pushing."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from transformers import AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

from conftest import DATA_PREFIX, write_datasets
from lema.records import CorrectionExample, CotExample
from lema.store import LocalStore
from lema.training.config import DataSettings, MetricsSettings, TrainSettings
from lema.training.data import IGNORE_INDEX, DataError, load_training_data, tokenize_examples
from lema.training.job import TrainingJob
from lema.training.metrics import TrainingMetrics

Examples = tuple[list[CotExample], list[CorrectionExample]]


@pytest.fixture()
def store(tmp_path: Path, gsm8k_examples: Examples) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    cot, corrections = gsm8k_examples
    write_datasets(store, DATA_PREFIX, cot[:10], corrections)
    return store


def test_mix_keeps_every_correction_by_default_and_none_for_the_baseline(store: LocalStore) -> None:
    lema = load_training_data(store, DataSettings(prefix=DATA_PREFIX), seed=1)
    assert [p.kind for p in lema.examples].count("cot") == 10
    assert [p.kind for p in lema.examples].count("correction") == 24
    assert sorted(lema.sha256) == [f"{DATA_PREFIX}/corrections.jsonl", f"{DATA_PREFIX}/cot.jsonl"]

    baseline = load_training_data(store, DataSettings(prefix=DATA_PREFIX, cot_only=True), seed=1)
    assert {p.kind for p in baseline.examples} == {"cot"}
    assert list(baseline.sha256) == [f"{DATA_PREFIX}/cot.jsonl"]


def test_mix_ratio_resamples_corrections_deterministically(store: LocalStore) -> None:
    half = DataSettings(prefix=DATA_PREFIX, corrections_per_cot=0.5)
    first = load_training_data(store, half, seed=7).examples
    assert [p.kind for p in first].count("correction") == 5
    assert first == load_training_data(store, half, seed=7).examples
    assert first != load_training_data(store, half, seed=8).examples
    # More corrections than exist: every one is used before any repeats.
    triple = load_training_data(store, DataSettings(prefix=DATA_PREFIX, corrections_per_cot=3.0), seed=7).examples
    corrections = [p for p in triple if p.kind == "correction"]
    assert len(corrections) == 30
    assert len(set(corrections[:24])) == 24


def test_missing_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere/cot\.jsonl: dataset file not found"):
        load_training_data(LocalStore(tmp_path), DataSettings(prefix="nowhere"), seed=0)


def test_labels_mask_the_prompt_and_long_targets_are_cut(tiny_llama_dir: Path, store: LocalStore) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pairs = load_training_data(store, DataSettings(prefix=DATA_PREFIX), seed=0).examples[:3]
    features = tokenize_examples(tokenizer, pairs, max_length=4096)
    for pair, feature in zip(pairs, features, strict=True):
        trained = [t for t, label in zip(feature["input_ids"], feature["labels"], strict=True) if label != IGNORE_INDEX]
        # The target is the assistant turn: the output text and the end-of-turn token, never the question.
        assert tokenizer.decode(trained) == pair.output + "<|im_end|>\n"
        prompt = tokenizer.decode(feature["input_ids"][: len(feature["input_ids"]) - len(trained)])
        # The sampler's framing: its system prompt and one-shot example, then the question.
        assert prompt.startswith("<|im_start|>system\nYou are a patient math teacher.")
        assert prompt.endswith(f"<|im_start|>user\n{pair.input}<|im_end|>\n<|im_start|>assistant\n")
        assert prompt.count("<|im_start|>user\n") == 2
    short = tokenize_examples(tokenizer, pairs, max_length=len(features[0]["input_ids"]) - 5)
    assert len(short[0]["input_ids"]) == len(features[0]["input_ids"]) - 5


@pytest.mark.slow
def test_lora_on_smollm2_lowers_the_loss_on_correction_examples(
    tmp_path: Path, smollm2_dir: Path, gsm8k_examples: Examples
) -> None:
    _, corrections = gsm8k_examples
    few = sorted(corrections, key=lambda e: len(e.input) + len(e.output))[:2]
    store = LocalStore(tmp_path / "store")
    write_datasets(store, "few", [], few)
    settings = TrainSettings.model_validate(
        {
            "run": {"work_dir": str(tmp_path / "work")},
            "model": {"name": str(smollm2_dir)},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"prefix": "few", "max_length": 320},
            "optim": {"max_steps": 3, "batch_size": 2, "learning_rate": 3e-3, "warmup_ratio": 0.0},
            "deepspeed": {"config": None},
            "checkpoints": {"prefix": "train/smol", "every_steps": 100},
            "store": {"root": str(tmp_path / "store")},
        }
    )
    job = TrainingJob.setup(settings)
    try:
        before = job.trainer.evaluate(eval_dataset=job.trainer.train_dataset)["eval_loss"]
        job.train()
        after = job.trainer.evaluate(eval_dataset=job.trainer.train_dataset)["eval_loss"]
        job.save()
    finally:
        job.cleanup()
    assert after < 0.8 * before, (before, after)
    assert store.exists("train/smol/adapter/adapter_model.safetensors")


class _Recorder(BaseHTTPRequestHandler):
    pushes: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.pushes.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads what was pushed, not the access log."""


@pytest.fixture()
def pushgateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A real HTTP endpoint that records pushes the way a Pushgateway receives them."""
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.pushes = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}", _Recorder.pushes
    server.shutdown()
    server.server_close()


def test_metrics_are_pushed_at_each_log(tmp_path: Path, pushgateway: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    address, pushes = pushgateway
    metrics = TrainingMetrics(MetricsSettings(pushgateway=address, job="lema-train"), run_name="tiny")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    metrics.on_train_begin(args, state, control)
    state.global_step, state.epoch, state.num_input_tokens_seen = 10, 0.5, 4096
    metrics.on_log(args, state, control, logs={"loss": 1.25, "learning_rate": 2e-4})

    assert len(pushes) == 1
    method, path, body = pushes[0]
    assert (method, path) == ("PUT", "/metrics/job/lema-train/run/tiny")
    text = body.decode()
    for line in (
        "lema_train_loss 1.25",
        "lema_train_learning_rate 0.0002",
        "lema_train_step 10.0",
        "lema_train_epoch 0.5",
        "lema_train_tokens_total 4096.0",
    ):
        assert line in text
    rate = next(line for line in text.splitlines() if line.startswith("lema_train_tokens_per_second "))
    assert float(rate.split()[1]) > 0


def test_metrics_are_served_on_the_configured_port(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = TrainingMetrics(MetricsSettings(port=port), run_name="tiny")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    metrics.on_train_begin(args, state, control)
    try:
        state.global_step = 3
        metrics.on_log(args, state, control, logs={"loss": 0.5})
        page = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        metrics.close()
    assert "lema_train_loss 0.5" in page
    assert "lema_train_step 3.0" in page


def test_a_taken_metrics_port_is_a_warning_not_a_lost_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = TrainingMetrics(MetricsSettings(port=port), run_name="tiny")
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
        state, control = TrainerState(), TrainerControl()
        metrics.on_train_begin(args, state, control)
        state.global_step = 1
        metrics.on_log(args, state, control, logs={"loss": 0.5})
        metrics.close()
    assert f"metrics.port {port}: cannot serve /metrics" in caplog.text
    assert "training goes on" in caplog.text
