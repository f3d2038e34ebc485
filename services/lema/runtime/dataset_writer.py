"""The platform's dataset writer: the pipeline's sink, made durable in the artifact store.

Every consumed batch is written as a JSONL shard under `<run>/shards/` (named by a hash of its content) before its
offsets are committed, and a restarted writer reloads every shard first, so neither a restart nor a SIGKILL loses a
record. Whenever its input goes quiet the writer rewrites the dataset (`cot.jsonl`, `corrections.jsonl`,
`run_summary.json`) from all records, deduplicated by id, and then `manifest.json`: a record delivered twice
appears once, and the files equal what the embedded runtime writes for the same records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from lema.bus.base import Message, Topics
from lema.config import LemaSettings
from lema.pipeline import DatasetWriterWorker
from lema.prompts import TEMPLATES_DIR
from lema.records import SCHEMA_VERSION, Record
from lema.store.base import ArtifactStore

log = logging.getLogger(__name__)


def save_run_config(store: ArtifactStore, settings: LemaSettings) -> None:
    """The resolved settings and the prompt templates in force, beside the dataset they produce."""
    run = settings.run.name
    config = yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
    store.put_bytes(f"{run}/config.yaml", config.encode())
    for template in sorted(Path(settings.run.prompts_dir or TEMPLATES_DIR).glob("*.yaml")):
        store.put_bytes(f"{run}/prompts/{template.name}", template.read_bytes())


class DurableDatasetWriter:
    """A `Worker` (same inputs as `DatasetWriterWorker`, which it wraps) whose every batch is persisted first."""

    name = "dataset-writer"

    def __init__(self, worker: DatasetWriterWorker, store: ArtifactStore, run: str) -> None:
        self.inputs: Mapping[str, type[Record]] = worker.inputs
        self._worker = worker
        self._store = store
        self._run = run
        self.shards = self._restore()
        self._dirty = self.shards > 0

    def _restore(self) -> int:
        """Reload every shard of the run; returns how many there were."""
        keys = self._store.list(f"{self._run}/shards/")
        for key in keys:
            for number, line in enumerate(self._store.get_bytes(key).decode().splitlines(), start=1):
                try:
                    entry = json.loads(line)
                    topic = entry["topic"]
                    record = self.inputs[topic].model_validate(entry["record"])
                except (ValueError, KeyError) as exc:
                    raise ValueError(f"{self._store.uri(key)}:{number}: unreadable shard line: {exc}") from exc
                self._worker.process(topic, [record])
        if keys:
            log.info("dataset-writer: restored %d shard(s) of run %s", len(keys), self._run)
        return len(keys)

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        lines = "".join(
            json.dumps({"topic": topic, "record": r.model_dump(mode="json")}, ensure_ascii=False) + "\n"
            for r in records
        ).encode()
        digest = hashlib.sha256(lines).hexdigest()[:16]
        self._store.put_bytes(f"{self._run}/shards/{topic}-{digest}.jsonl", lines)
        self.shards += 1
        self._dirty = True
        return self._worker.process(topic, records)

    def flush(self) -> None:
        """Rewrite the dataset and the manifest if anything arrived since the last flush."""
        if not self._dirty:
            return
        builder = self._worker.builder
        keys = builder.write(self._store, self._run)
        records = {
            Topics.QUESTIONS: len(builder.questions),
            Topics.COT: len(builder.correct),
            Topics.MISTAKES: len(builder.wrong),
            Topics.VERIFIED: len(builder.verified),
            Topics.DROPS: len(builder.drops),
        }
        manifest = {
            "run": self._run,
            "schema_version": SCHEMA_VERSION,
            "records": records,
            "shards": self.shards,
            "files": keys,
        }
        self._store.put_bytes(f"{self._run}/manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        self._dirty = False
        log.info("dataset-writer: wrote %s (%s)", self._store.uri(f"{self._run}/manifest.json"), records)
