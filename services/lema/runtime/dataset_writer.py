"""The platform's dataset writer: every consumed batch is one commit to the run's dataset table, offsets included.

Exactly-once, however many replicas: a replica appends a batch's rows together with the next offset of each
partition the batch came from (Delta app transactions, one per group/topic/partition), and a replica assigned a
partition starts from the offset the table holds, not from the group's commit, so neither a restart, a SIGKILL nor
a rebalance loses a record or appends one of its batches twice. The group's Kafka commit still follows each table
commit (lag metrics and `lema submit` read it); the table's offsets are the ones that count. Memory and time per
batch do not depend on how much the run has written: nothing is kept between batches, and nothing is rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from lema.bus.kafka import Delivery, Partition
from lema.config import LemaSettings
from lema.pipeline import DatasetWriterWorker
from lema.prompts import TEMPLATES_DIR
from lema.store.base import ArtifactStore


def save_run_config(store: ArtifactStore, settings: LemaSettings) -> None:
    """The resolved settings and the prompt templates in force, beside the dataset they produce."""
    run = settings.run.name
    config = yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
    store.put_bytes(f"{run}/config.yaml", config.encode())
    for template in sorted(Path(settings.run.prompts_dir or TEMPLATES_DIR).glob("*.yaml")):
        store.put_bytes(f"{run}/prompts/{template.name}", template.read_bytes())


def source_id(group: str, topic: str, partition: int) -> str:
    """The table's app transaction id for one partition consumed by one group."""
    return f"{group}/{topic}/{partition}"


class TableOffsets:
    """The Kafka worker's hooks for the dataset writer: commit each batch with its offsets; start where the table
    says."""

    def __init__(self, worker: DatasetWriterWorker, group: str) -> None:
        self.worker = worker
        self.group = group

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """After a batch was processed (its rows are pending): append them with the batch's next offsets."""
        offsets: dict[str, int] = {}
        for delivery in deliveries:
            source = source_id(self.group, delivery.topic, delivery.partition)
            offsets[source] = max(offsets.get(source, 0), delivery.offset + 1)
        self.worker.commit(offsets)

    def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Where newly assigned partitions start: the table's offsets, for those it has."""
        sources = {source_id(self.group, topic, partition): (topic, partition) for topic, partition in partitions}
        held = self.worker.resources.dataset_sink.offsets(list(sources))
        return {sources[source]: offset for source, offset in held.items()}
