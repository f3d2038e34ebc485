"""Checkpoints live in the artifact store, so a job killed anywhere (pod evicted, node lost) resumes on another node.

A checkpoint is uploaded file by file and then marked complete with one small object written last: a job killed
mid-upload leaves an unmarked checkpoint that resume ignores, never a half one that it loads.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lema.store import ArtifactStore

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
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

    def download(self, step: int, local_dir: Path) -> Path:
        """Fetch a checkpoint into a clean `local_dir/checkpoint-<step>`: whatever a killed run left there goes."""
        target = local_dir / f"checkpoint-{step}"
        shutil.rmtree(target, ignore_errors=True)
        folder = f"{self.prefix}/checkpoint-{step}/"
        for key in self.store.list(folder):
            relative = key[len(folder) :]
            if relative != COMPLETE_MARKER:
                self.store.download_file(key, target / relative)
        return target

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` complete checkpoints, marker first so none is ever seen half-deleted."""
        for step in self.complete_steps()[:-keep]:
            self.store.delete(self._key(step, COMPLETE_MARKER))
            for key in self.store.list(f"{self.prefix}/checkpoint-{step}/"):
                self.store.delete(key)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class UploadCheckpoints(TrainerCallback):
    """After the Trainer saves a checkpoint locally, copy it to the store and mark it complete.

    With ZeRO every rank writes its own optimizer shard, so each node's first process uploads what its node wrote;
    only when all have finished does rank 0 mark the checkpoint complete.
    """

    def __init__(self, checkpoints: CheckpointStore, local_dir: Path, keep: int) -> None:
        self.checkpoints = checkpoints
        self.local_dir = local_dir
        self.keep = keep

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        step = state.global_step
        if step >= state.max_steps:
            # The job saves the adapter next; a checkpoint with no steps left would only make a restart redo nothing.
            return
        if state.is_local_process_zero:
            self.checkpoints.upload_files(self.local_dir / f"checkpoint-{step}", step)
        _barrier()
        if state.is_world_process_zero:
            self.checkpoints.mark_complete(step)
            self.checkpoints.prune(self.keep)
            log.info("checkpoint %d stored at %s", step, self.checkpoints.uri(step))
