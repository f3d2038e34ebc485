"""Checkpoints live in the artifact store, so a job killed anywhere (pod evicted, node lost) resumes on another node.

A checkpoint is uploaded file by file and then marked complete with one small object written last: a job killed
mid-upload leaves an unmarked checkpoint that resume ignores, never a half one that it loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lema.store import ArtifactStore
from lema.training.config import TrainSettings

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
FINGERPRINT_FILE = "fingerprint.json"
"""Stored in every checkpoint: what run it belongs to (see `run_fingerprint`)."""
_STEP_DIR = re.compile(r"checkpoint-(\d+)")


class CheckpointStore:
    """`<prefix>/checkpoints/checkpoint-<step>/...` in the store, mirroring the Trainer's local checkpoint folders."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store = store
        self.prefix = f"{prefix}/checkpoints"

    def _key(self, step: int, relative: str) -> str:
        return f"{self.prefix}/checkpoint-{step}/{relative}"

    def uri(self, step: int) -> str:
        return self.store.uri(f"{self.prefix}/checkpoint-{step}")

    def complete_steps(self) -> list[int]:
        steps = set()
        for key in self.store.list(f"{self.prefix}/"):
            folder, _, name = key[len(self.prefix) + 1 :].partition("/")
            match = _STEP_DIR.fullmatch(folder)
            if match and name == COMPLETE_MARKER:
                steps.add(int(match.group(1)))
        return sorted(steps)

    def upload_files(self, local_dir: Path, step: int) -> None:
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.store.upload_file(self._key(step, path.relative_to(local_dir).as_posix()), path)

    def mark_complete(self, step: int) -> None:
        self.store.put_bytes(self._key(step, COMPLETE_MARKER), b"")

    def put_fingerprint(self, step: int, fingerprint: dict[str, Any]) -> None:
        self.store.put_bytes(self._key(step, FINGERPRINT_FILE), json.dumps(fingerprint, indent=2).encode())

    def fingerprint(self, step: int) -> dict[str, Any]:
        """The fingerprint a checkpoint was stored with; an empty one if it has none (it predates them)."""
        try:
            stored: dict[str, Any] = json.loads(self.store.get_bytes(self._key(step, FINGERPRINT_FILE)))
        except KeyError:
            return {}
        return stored

    def download(self, step: int, local_dir: Path) -> Path:
        """Fetch a checkpoint into a clean `local_dir/checkpoint-<step>`: whatever a killed run left there goes."""
        target = local_dir / f"checkpoint-{step}"
        shutil.rmtree(target, ignore_errors=True)
        folder = f"{self.prefix}/checkpoint-{step}/"
        for key in self.store.list(folder):
            relative = key[len(folder) :]
            if relative not in (COMPLETE_MARKER, FINGERPRINT_FILE):
                self.store.download_file(key, target / relative)
        return target

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` complete checkpoints, marker first so none is ever seen half-deleted."""
        for step in self.complete_steps()[:-keep]:
            self.store.delete(self._key(step, COMPLETE_MARKER))
            for key in self.store.list(f"{self.prefix}/checkpoint-{step}/"):
                self.store.delete(key)


def keep_trainable_module_state(checkpoint_dir: Path, trainable: set[str]) -> None:
    """Reduce DeepSpeed's module state to the trained tensors. Asked to leave frozen parameters out, it still keeps
    any it reaches under a second name: a tied `lm_head` is the whole embedding matrix (113 MB of SmolLM2-135M in
    fp32, against a 20 MB adapter). The optimizer state holds trainable parameters only; resuming a PEFT model loads
    the module state non-strictly, the frozen base coming from the model itself."""
    for path in sorted(checkpoint_dir.glob("global_step*/*model_states.pt")):
        state = torch.load(path, map_location="cpu", weights_only=False)
        module = state.get("module")
        if not module:
            continue
        keep = trainable | set(state.get("buffer_names") or ())
        kept = {name: tensor for name, tensor in module.items() if name in keep}
        if len(kept) < len(module):
            state["module"] = kept
            torch.save(state, path)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class UploadCheckpoints(TrainerCallback):
    """After the Trainer saves a checkpoint locally, copy it to the store and mark it complete.

    With ZeRO every rank writes its own optimizer shard, so each node's first process uploads what its node wrote;
    only when all have finished does rank 0 mark the checkpoint complete.
    """

    def __init__(self, checkpoints: CheckpointStore, local_dir: Path, keep: int, fingerprint: dict[str, Any]) -> None:
        self.checkpoints = checkpoints
        self.local_dir = local_dir
        self.keep = keep
        self.fingerprint = fingerprint

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **_: Any
    ) -> None:
        step = state.global_step
        local = self.local_dir / f"checkpoint-{step}"
        if step >= state.max_steps:
            # The job saves the adapter next; a checkpoint with no steps left would only make a restart redo nothing.
            if state.is_local_process_zero:
                shutil.rmtree(local, ignore_errors=True)
            return
        if state.is_local_process_zero:
            if model is not None:
                keep_trainable_module_state(local, {name for name, p in model.named_parameters() if p.requires_grad})
            self.checkpoints.upload_files(local, step)
        _barrier()
        if state.is_local_process_zero:
            shutil.rmtree(local, ignore_errors=True)  # in the store now; the pod's disk holds no copy
        if state.is_world_process_zero:
            self.checkpoints.put_fingerprint(step, self.fingerprint)
            self.checkpoints.mark_complete(step)
            self.checkpoints.prune(self.keep)
            log.info("checkpoint %d stored at %s", step, self.checkpoints.uri(step))


class RunMismatchError(ValueError):
    """The store prefix holds a run made with other settings, data or world size: resuming it would mix two runs."""


def run_fingerprint(
    settings: TrainSettings, deepspeed: dict[str, Any] | None, datasets_sha256: dict[str, str], world_size: int
) -> dict[str, Any]:
    """Everything that decides what a run computes, flattened to `section.field: value` so a change can be named:
    the resolved settings (4-bit and bf16 as this machine resolves them), the DeepSpeed config's content, the
    digest of every dataset file, and the number of ranks (ZeRO shards its optimizer state by it). Where things go
    (work dir, store, checkpoint cadence, metrics, submit) is left out: changing it changes no result."""
    from lema.training.model import use_4bit, use_bf16

    decisive = settings.model_dump(
        mode="json",
        include={"run": {"seed"}, "model": {"name", "gradient_checkpointing"}, "lora": True, "data": True,
                 "optim": True, "deepspeed": {"offload"}},
    )  # fmt: skip
    flat = _flatten(decisive)
    flat["model.4bit"] = use_4bit(settings.model)
    flat["model.bf16"] = use_bf16()
    flat["deepspeed.config_sha256"] = _digest(deepspeed) if deepspeed is not None else None
    flat.update({f"dataset.{key}": digest for key, digest in sorted(datasets_sha256.items())})
    flat["world_size"] = world_size
    return flat


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    return _digest(fingerprint)[:8]


def describe_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`key: old -> new` for every field that differs, on one line."""
    keys = sorted(set(before) | set(after))
    changed = [key for key in keys if before.get(key, _UNSET) != after.get(key, _UNSET)]
    return "; ".join(f"{key}: {_show(before.get(key, _UNSET))} -> {_show(after.get(key, _UNSET))}" for key in changed)


_UNSET = object()


def _show(value: Any) -> str:
    return "(none)" if value is _UNSET else json.dumps(value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
