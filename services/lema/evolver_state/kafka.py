"""The evolver state on the broker: a compacted single-partition topic, the GlobalKTable pattern.

Entries (key -> JSON value): `question/<id>` -> the question, `seed/<id>` -> its `Evolution`. Every replica reads
the whole topic before it serves and catches up whenever it claims seeds (reading back to past its claims), so
before it evolves anything it holds every question remembered and every claim written before them. One partition
gives every entry one order, and that order decides claims: when two replicas claim a seed at once, both read back
to past their own claim and agree that the first claim wins; the loser appends the winner's claim again, so
compaction (which keeps a key's *last* value) keeps the winner.

Cost: restoring reads every entry once (O(history), at start only); a batch with seeds not claimed yet costs one
write of its claims and a read back to past them (the entries added since the last batch).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

from lema.bus.kafka import BusError, client_options
from lema.config import BusSettings
from lema.evolver_state.base import Evolution
from lema.records import Question
from lema.stages.evolve import QuestionIndex

log = logging.getLogger(__name__)

STATE_TOPIC = "evolver.state"
"""Its name after `bus.topic_prefix`."""
CATCH_UP_TIMEOUT_S = 60.0
_QUESTION, _SEED = "question/", "seed/"


def ensure_state_topic(settings: BusSettings) -> str:
    """Create the compacted state topic if it does not exist; returns its full name."""
    name = settings.topic_prefix + STATE_TOPIC
    admin = KafkaAdminClient(**client_options(settings), client_id="lema-admin")
    try:
        if name not in set(admin.list_topics()):
            spec = {"num_partitions": 1, "replication_factor": -1, "configs": {"cleanup.policy": "compact"}}
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica created it first
                admin.create_topics({name: spec})
    finally:
        admin.close()
    return name


class KafkaEvolverState:
    def __init__(self, settings: BusSettings, threshold: float, client_id: str) -> None:
        self.index = QuestionIndex(threshold)
        self._evolutions: dict[str, Evolution] = {}
        self._partition = TopicPartition(ensure_state_topic(settings), 0)
        self._producer = KafkaProducer(
            **client_options(settings),
            client_id=f"{client_id}-state",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
        )
        self._consumer = KafkaConsumer(
            **client_options(settings),
            client_id=f"{client_id}-state",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        self._consumer.assign([self._partition])
        self._consumer.seek_to_beginning(self._partition)
        started = time.perf_counter()
        self._catch_up()
        log.info(
            "evolver state: restored %d question(s) and %d seed(s) from %s in %.2fs",
            len(self.index),
            len(self._evolutions),
            self._partition.topic,
            time.perf_counter() - started,
        )

    # -- the interface ---------------------------------------------------------------------------------------
    def remember(self, questions: Sequence[Question]) -> None:
        new = [q for q in questions if not self.index.knows(q.id)]
        self._write([(_QUESTION + q.id, q.model_dump_json()) for q in new])
        for question in new:
            self.index.add(question)

    def claim(self, claimants: Mapping[str, str]) -> dict[str, Evolution]:
        """Claims are written without catching up first: reading back past them applies every earlier entry, so a
        seed another replica claimed meanwhile is seen to be theirs either way, and one round trip a batch is saved.
        A seed this replica already knows to be claimed needs no claim (its owner never changes)."""
        unclaimed = {seed: by for seed, by in claimants.items() if seed not in self._evolutions}
        if unclaimed:
            claims = [Evolution(seed_id=seed, claimant=by) for seed, by in unclaimed.items()]
            last = self._write([(_SEED + c.seed_id, c.model_dump_json()) for c in claims])
            self._catch_up(until=last + 1)
            lost = [self._evolutions[seed] for seed, by in unclaimed.items() if self._evolutions[seed].claimant != by]
            if lost:
                log.info("evolver state: %d seed(s) were claimed by another replica first", len(lost))
                self._write([(_SEED + winner.seed_id, winner.model_dump_json()) for winner in lost])
        return {seed: self._evolutions[seed] for seed in claimants}

    def record(self, evolutions: Sequence[Evolution]) -> None:
        entries = [(_SEED + e.seed_id, e.model_dump_json()) for e in evolutions]
        entries += [(_QUESTION + q.id, q.model_dump_json()) for e in evolutions for q in e.questions]
        self._write(entries)
        for evolution in evolutions:
            self._apply_evolution(evolution)
            for question in evolution.questions:
                self.index.add(question)

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()

    # -- the log ---------------------------------------------------------------------------------------------
    def _write(self, entries: Sequence[tuple[str, str]]) -> int:
        """Append entries and wait for the broker's acknowledgement; returns the offset of the last one (-1: none)."""
        futures = [
            self._producer.send(self._partition.topic, key=key.encode(), value=value.encode(), partition=0)
            for key, value in entries
        ]
        self._producer.flush()
        try:
            return max((future.get().offset for future in futures), default=-1)
        except KafkaError as exc:
            raise BusError(f"kafka: an evolver state entry was not acknowledged: {exc}") from exc

    def _catch_up(self, until: int | None = None) -> None:
        """Apply every entry up to `until` (default: the partition's current end).

        The end is the larger of the broker's end offset and the last fetch's high watermark: Tansu's end offset is
        the last batch's base offset + 1, short of the batch's other entries.
        """
        try:
            end = until if until is not None else self._consumer.end_offsets([self._partition])[self._partition]
        except KafkaError as exc:
            raise BusError(f"kafka: cannot read the end of {self._partition.topic}: {exc}") from exc
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while self._consumer.position(self._partition) < max(end, self._consumer.highwater(self._partition) or 0):
            if time.monotonic() > deadline:
                raise BusError(f"kafka: {self._partition.topic} not read up to offset {end} in {CATCH_UP_TIMEOUT_S}s")
            for records in self._consumer.poll(timeout_ms=500, max_records=10_000).values():
                for entry in records:
                    self._apply(entry.key.decode(), entry.value)

    def _apply(self, key: str, value: bytes) -> None:
        if key.startswith(_QUESTION):
            self.index.add(Question.model_validate_json(value))
        elif key.startswith(_SEED):
            self._apply_evolution(Evolution.model_validate_json(value))

    def _apply_evolution(self, evolution: Evolution) -> None:
        """First claim wins; later entries count only when they come from the owning claimant."""
        owner = self._evolutions.get(evolution.seed_id)
        if owner is None or (owner.claimant == evolution.claimant and not owner.done):
            self._evolutions[evolution.seed_id] = evolution
