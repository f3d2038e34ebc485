"""Training throughput: the lema training job against a plain `Trainer` loop, same model, data and batch.

Both train LoRA adapters on the same tokenized GSM8K examples for the same steps; the job adds everything it does in
production (DeepSpeed ZeRO-2 over gloo on CPU, length grouping, Prometheus callbacks, the store). Tokens/s counts
non-padding tokens between the end of the warm-up steps and the last step, timed by the same callback in both.
Prints the ratio job / plain (target >= 0.95). Run: .venv/bin/python benchmarks/bench_training.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from lema.records import CotExample, Question
from lema.store import LocalStore
from lema.training.config import TrainSettings
from lema.training.data import load_training_data, tokenize_examples
from lema.training.job import TrainingJob
from lema.training.model import load_lora_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "examples" / "data" / "gsm8k_train.jsonl"  # first 300 training lines


class StepTimer(TrainerCallback):
    """Tokens per second over the steps after `warmup`: the steady state, without start-up costs."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        mark = (time.perf_counter(), state.num_input_tokens_seen)
        if state.global_step == self.warmup:
            self.start = mark
        self.end = mark

    @property
    def tokens_per_second(self) -> float:
        assert self.start is not None and self.end is not None
        return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])


def write_cot_dataset(store: LocalStore, count: int) -> None:
    lines = []
    for number, line in enumerate(GSM8K.read_text().splitlines()[:count], start=1):
        row = json.loads(line)
        reasoning, _, gold = row["answer"].rpartition("####")
        question = Question.create(row["question"], gold.strip(), "gsm8k", f"gsm8k_train.jsonl:{number}")
        example = CotExample(
            id=f"cot-{question.id}", question_id=question.id, task="gsm8k", source="gold", model=None, round=0,
            input=question.text, output=f"{reasoning.strip()}\nThe answer is {question.gold}.", answer=question.gold,
        )  # fmt: skip
        lines.append(example.model_dump_json())
    store.put_bytes("bench/cot.jsonl", ("\n".join(lines) + "\n").encode())


def settings_for(work: Path, model: str, steps: int, batch_size: int, deepspeed: bool) -> TrainSettings:
    return TrainSettings.model_validate(
        {
            "run": {"work_dir": str(work / "job")},
            "model": {"name": model},
            "data": {"prefix": "bench", "cot_only": True, "max_length": 512},
            "optim": {"max_steps": steps, "batch_size": batch_size, "logging_steps": 1, "warmup_ratio": 0.0},
            "deepspeed": {"config": str(REPO / "training_job" / "ds_zero2.json") if deepspeed else None},
            "checkpoints": {"prefix": "bench/out", "every_steps": steps + 1},
            "store": {"root": str(work / "store")},
        }
    )


def job_tokens_per_second(settings: TrainSettings, warmup: int) -> float:
    job = TrainingJob.setup(settings)
    timer = StepTimer(warmup)
    job.trainer.add_callback(timer)
    try:
        job.train()
    finally:
        job.cleanup()
    return timer.tokens_per_second


def plain_tokens_per_second(settings: TrainSettings, work: Path, warmup: int) -> float:
    """A bare `Trainer` on the same LoRA model and tokenized data: no DeepSpeed, no callbacks, no store."""
    tokenizer = load_tokenizer(settings.model)
    data = load_training_data(LocalStore(work / "store"), settings.data, settings.run.seed)
    args = TrainingArguments(
        output_dir=str(work / "plain"), max_steps=settings.optim.max_steps,
        per_device_train_batch_size=settings.optim.batch_size, learning_rate=settings.optim.learning_rate,
        lr_scheduler_type=settings.optim.scheduler, logging_steps=1, save_strategy="no", seed=settings.run.seed,
        train_sampling_strategy="group_by_length",  # the job's batches: the ratio measures overhead, not padding
        include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    timer = StepTimer(warmup)
    trainer = Trainer(
        model=load_lora_model(settings.model, settings.lora),
        args=args,
        train_dataset=tokenize_examples(tokenizer, data.examples, settings.data.max_length),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=[timer],
    )
    trainer.train()
    return timer.tokens_per_second


RUNS = {"plain Trainer loop": "plain", "job (DeepSpeed ZeRO-2)": "job-zero2", "job (no DeepSpeed)": "job"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--measure", choices=sorted(RUNS.values()), help="(internal) one measurement, as JSON")
    parser.add_argument("--work", type=Path, help="(internal) the parent's scratch directory")
    args = parser.parse_args()
    if args.measure:
        # Each measurement runs in a process of its own, as a job does: DeepSpeed's global state stays behind.
        settings = settings_for(args.work, args.model, args.steps, args.batch_size, args.measure == "job-zero2")
        if args.measure == "plain":
            rate = plain_tokens_per_second(settings, args.work, args.warmup)
        else:
            rate = job_tokens_per_second(settings, args.warmup)
        print(json.dumps({"tokens_per_second": rate}))
        return
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:
        write_cot_dataset(LocalStore(Path(scratch) / "store"), args.examples)
        for name, measure in RUNS.items():
            command = [sys.executable, __file__, "--measure", measure, "--work", scratch]
            command += ["--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            command += ["--batch-size", str(args.batch_size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rates[name] = json.loads(output.strip().splitlines()[-1])["tokens_per_second"]
    plain = rates.pop("plain Trainer loop")
    print(f"model {args.model}, batch {args.batch_size}, steps {args.warmup + 1}-{args.steps} timed")
    print(f"plain Trainer loop    : {plain:8.1f} tokens/s")
    for name, rate in rates.items():
        print(f"{name:22}: {rate:8.1f} tokens/s  ratio {rate / plain:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
