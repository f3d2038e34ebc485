"""The training job: setup → train → save → cleanup, the same in `lema train`, under torchrun and in a pod.

Everything durable goes to the artifact store: checkpoints while training (so a killed job resumes where it was),
then the adapter, optionally the merged model, and a manifest naming the data, config and versions that made them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from lema.config import ConfigError
from lema.store import ArtifactStore, StoreError, create_store
from lema.training.checkpoints import (
    CheckpointStore,
    RunMismatchError,
    UploadCheckpoints,
    describe_change,
    fingerprint_digest,
    run_fingerprint,
)
from lema.training.config import TrainSettings, load_train_settings
from lema.training.data import DataError, load_training_data, tokenize_examples
from lema.training.metrics import TrainingMetrics
from lema.training.model import load_lora_model, load_tokenizer, merge_adapter, use_bf16

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


def deepspeed_config(settings: TrainSettings) -> dict[str, Any] | None:
    """The shipped JSON, with CPU offload added when asked ('auto' values are filled in by the Trainer)."""
    path = settings.deepspeed.config
    if path is None:
        return None
    try:
        config: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"deepspeed.config: cannot read {path}: {exc}") from exc
    if settings.deepspeed.offload:
        zero = config.setdefault("zero_optimization", {})
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero.get("stage") == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # Offloaded optimizer steps run in DeepSpeed's CPU Adam (a compiled op), not in the torch optimizer.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_process_group_env() -> None:
    """A lone process (no torchrun) is rank 0 of 1: DeepSpeed always initialises torch.distributed."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _use_gloo_on_cpu() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce: it marks the op unusable and falls back to
    plain gloo collectives (its op table is a module-level dict, probed once, that later lookups read)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _package_versions() -> dict[str, str]:
    versions = {}
    for package in ("lema", "torch", "transformers", "peft", "deepspeed", "accelerate"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class TrainingJob:
    settings: TrainSettings
    store: ArtifactStore
    trainer: Any
    dataset_sha256: dict[str, str]
    metrics: TrainingMetrics
    checkpoints: CheckpointStore
    prefix: str
    fingerprint: dict[str, Any]
    resume_from: Path | None = None
    results: dict[str, float] = field(default_factory=dict)

    @classmethod
    def setup(cls, settings: TrainSettings) -> TrainingJob:
        """Read and tokenize the data, build the LoRA model and the Trainer, and fetch the checkpoint to resume."""
        set_seed(settings.run.seed)
        store = create_store(settings.store)
        data = load_training_data(store, settings.data, settings.run.seed)
        ds_config = deepspeed_config(settings)
        if ds_config is not None:
            ensure_process_group_env()
            if not settings.deepspeed.cpu_shm_comm and not torch.cuda.is_available():
                _use_gloo_on_cpu()
        optim = settings.optim
        local_checkpoints = settings.run.work_dir / "checkpoints"
        args = TrainingArguments(
            output_dir=str(local_checkpoints),
            run_name=settings.run.name,
            seed=settings.run.seed,
            max_steps=optim.max_steps,
            num_train_epochs=optim.epochs,
            per_device_train_batch_size=optim.batch_size,
            gradient_accumulation_steps=optim.gradient_accumulation_steps,
            learning_rate=optim.learning_rate,
            weight_decay=optim.weight_decay,
            warmup_steps=optim.warmup_ratio,
            lr_scheduler_type=optim.scheduler,
            train_sampling_strategy="group_by_length" if optim.group_by_length else "random",
            logging_steps=optim.logging_steps,
            save_strategy="steps",
            save_steps=settings.checkpoints.every_steps,
            save_total_limit=1,
            bf16=use_bf16(),
            use_cpu=not torch.cuda.is_available(),
            activation_checkpointing=settings.model.gradient_checkpointing,
            deepspeed=ds_config,
            include_num_input_tokens_seen="non_padding",
            report_to="none",
            disable_tqdm=True,
        )
        fingerprint = run_fingerprint(settings, ds_config, data.sha256, args.world_size)
        prefix = run_prefix(store, settings, fingerprint)
        checkpoints = CheckpointStore(store, prefix)
        resume_from = None
        with args.main_process_first(local=True, desc="model conversion and checkpoint download"):
            tokenizer = load_tokenizer(settings.model)
            zero3 = (ds_config or {}).get("zero_optimization", {}).get("stage") == 3
            model = load_lora_model(settings.model, settings.lora, zero3=zero3)
            steps = checkpoints.complete_steps() if settings.checkpoints.resume else []
            if args.local_process_index == 0:
                # Whatever an earlier run left on this disk is not trusted: the store holds the checkpoints.
                shutil.rmtree(local_checkpoints, ignore_errors=True)
            if steps:
                # One download per node; the node's other ranks read it once the first process leaves this block.
                resume_from = local_checkpoints / f"checkpoint-{steps[-1]}"
                if args.local_process_index == 0:
                    checkpoints.download(steps[-1], local_checkpoints)
        features = tokenize_examples(tokenizer, data.examples, settings.data.max_length)
        metrics = TrainingMetrics(settings.metrics, settings.run.name)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=features,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
            processing_class=tokenizer,
            callbacks=[
                metrics,
                UploadCheckpoints(checkpoints, local_checkpoints, settings.checkpoints.keep, fingerprint),
            ],
        )
        return cls(settings, store, trainer, data.sha256, metrics, checkpoints, prefix, fingerprint, resume_from)

    def train(self) -> None:
        if self.resume_from is not None:
            log.info("resuming from %s", self.resume_from)
        output = self.trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        self.results = {key: float(value) for key, value in output.metrics.items()}
        self.results["global_step"] = float(self.trainer.state.global_step)

    def save(self) -> None:
        """Adapter (and, if asked, merged weights) to the store, then the manifest: written last, it marks the end."""
        prefix = self.prefix
        adapter_dir = self.settings.run.work_dir / "adapter"
        self.trainer.save_model(str(adapter_dir))  # collective under ZeRO-3: every rank takes part
        if not self.trainer.is_world_process_zero():
            return
        _upload_dir(self.store, adapter_dir, f"{prefix}/adapter")
        merged = None
        if self.settings.checkpoints.merge_weights:
            # Training is over: without this, ZeRO-3 would load the base model for merging as empty shards.
            unset_hf_deepspeed_config()  # type: ignore[no-untyped-call]
            merged = f"{prefix}/merged"
            with tempfile.TemporaryDirectory() as scratch:
                model = self.settings.model
                merge_adapter(model.name, model.cache_dir, adapter_dir, Path(scratch))
                _upload_dir(self.store, Path(scratch), merged)
        manifest = {
            "run": self.settings.run.name,
            "prefix": self.store.uri(prefix),
            "fingerprint": self.fingerprint,
            "adapter": self.store.uri(f"{prefix}/adapter"),
            "merged": self.store.uri(merged) if merged else None,
            "datasets_sha256": self.dataset_sha256,
            "resumed_from": str(self.resume_from.name) if self.resume_from else None,
            "metrics": self.results,
            "versions": _package_versions(),
            "config": self.settings.model_dump(mode="json"),
        }
        self.store.put_bytes(f"{prefix}/{MANIFEST_FILE}", json.dumps(manifest, indent=2).encode())
        log.info("adapter and manifest stored at %s", self.store.uri(prefix))
        shutil.rmtree(adapter_dir, ignore_errors=True)

    def cleanup(self) -> None:
        self.metrics.close()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _stored_fingerprint(store: ArtifactStore, prefix: str) -> dict[str, Any] | None:
    """The fingerprint of the run at `prefix`: its latest complete checkpoint's, else its manifest's; None if the
    prefix holds neither (nothing there to resume or to overwrite)."""
    checkpoints = CheckpointStore(store, prefix)
    steps = checkpoints.complete_steps()
    if steps:
        return checkpoints.fingerprint(steps[-1])
    if store.exists(f"{prefix}/{MANIFEST_FILE}"):
        stored: dict[str, Any] = json.loads(store.get_bytes(f"{prefix}/{MANIFEST_FILE}")).get("fingerprint") or {}
        return stored
    return None


def run_prefix(store: ArtifactStore, settings: TrainSettings, fingerprint: dict[str, Any]) -> str:
    """Where this run keeps checkpoints, adapter and manifest: `checkpoints.prefix`, unless a run with another
    fingerprint is there. Then the job refuses (one line naming what changed), or with `on_change: new_run`
    starts under `<prefix>-<fingerprint digest>`, which a rerun of the same settings resumes."""
    prefix = settings.checkpoints.prefix
    stored = _stored_fingerprint(store, prefix)
    if stored is None or stored == fingerprint:
        return prefix
    change = describe_change(stored, fingerprint) if stored else "it predates run fingerprints"
    fresh = f"{prefix}-{fingerprint_digest(fingerprint)}"
    if settings.checkpoints.on_change == "refuse":
        raise RunMismatchError(
            f"{store.uri(prefix)} holds a run with other settings ({change}); resuming it would mix two runs: "
            f"use another checkpoints.prefix, or --new-run to start fresh under {fresh}"
        )
    log.warning("%s holds a run with other settings (%s): this run starts under %s", prefix, change, fresh)
    return fresh


def _upload_dir(store: ArtifactStore, local_dir: Path, prefix: str) -> None:
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        store.upload_file(f"{prefix}/{path.relative_to(local_dir).as_posix()}", path)


def run_job(settings: TrainSettings) -> dict[str, float]:
    """The whole job; returns the final training metrics."""
    job = TrainingJob.setup(settings)
    try:
        job.train()
        job.save()
    finally:
        job.cleanup()
    return job.results


def launch_local(config: Path, overrides: list[str], processes: int) -> int:
    """`processes` ranks on this machine through torchrun (gloo on CPU); each runs `main` below."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "lema.training.job", "--config", str(config)]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point of `training_job/train.py` and of each torchrun rank."""
    parser = argparse.ArgumentParser(description="LEMA fine-tuning job (setup → train → save → cleanup).")
    parser.add_argument("--config", type=Path, required=True, help="Training YAML (see training_job/example.yaml).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # added by `deepspeed`
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(message)s")
    try:
        results = run_job(load_train_settings(args.config, args.overrides))
    except (ConfigError, DataError, StoreError, RunMismatchError) as exc:
        log.error("error: %s", exc)
        return 2
    log.info("finished: %s", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
