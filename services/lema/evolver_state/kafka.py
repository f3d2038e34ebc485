"""The evolver state on the broker: a compacted single-partition topic, the GlobalKTable pattern.

Entries (key -> JSON value): `question/<id>` -> the question, `seed/<id>` -> its `Evolution`. Every replica reads
the whole topic before it serves and catches up whenever it claims seeds (reading back to past its claims), so
before it evolves anything it holds every question remembered and every claim written before them. One partition
gives every entry one order, and that order decides claims: when two replicas claim a seed at once, both read back
to past their own claim and agree that the first claim wins; the loser appends the winner's claim again, so
compaction (which keeps a key's *last* value) keeps the winner.

The topic is read and written through `lema.bus.kafka.kafka_log`, on the client `bus.client` names.

Cost: restoring reads every entry once (O(history), at start only); a batch with seeds not claimed yet costs one
write of its claims and a read back to past them (the entries added since the last batch). Reading back parses
only what is news: a question already indexed, or an entry this replica wrote itself, is applied without parsing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from lema.bus.kafka import ensure_topics, kafka_log
from lema.config import BusSettings
from lema.evolver_state.base import Evolution
from lema.records import Question
from lema.stages.evolve import QuestionIndex

log = logging.getLogger(__name__)

STATE_TOPIC = "evolver.state"
"""Its name after `bus.topic_prefix`."""
_QUESTION, _SEED = "question/", "seed/"


def ensure_state_topic(settings: BusSettings) -> str:
    """Create the compacted state topic if it does not exist; returns its full name."""
    ensure_topics(settings, [STATE_TOPIC], partitions=1, replication_factor=-1, configs={"cleanup.policy": "compact"})
    return settings.topic_prefix + STATE_TOPIC


class KafkaEvolverState:
    def __init__(self, settings: BusSettings, threshold: float, client_id: str) -> None:
        self.index = QuestionIndex(threshold)
        self._evolutions: dict[str, Evolution] = {}
        self._written: dict[tuple[str, bytes], Evolution] = {}
        """Seed entries this replica wrote and has not read back yet, parsed: reading one back needs no parse."""
        self._log = kafka_log(settings, ensure_state_topic(settings), client_id=f"{client_id}-state")
        started = time.perf_counter()
        self._catch_up()
        log.info(
            "evolver state: restored %d question(s) and %d seed(s) from %s in %.2fs",
            len(self.index),
            len(self._evolutions),
            settings.topic_prefix + STATE_TOPIC,
            time.perf_counter() - started,
        )

    # -- the interface ---------------------------------------------------------------------------------------
    def remember(self, questions: Sequence[Question]) -> None:
        new = [q for q in questions if not self.index.knows(q.id)]
        self._write([(_QUESTION + q.id, q.model_dump_json().encode()) for q in new])
        for question in new:
            self.index.add(question)

    def claim(self, claimants: Mapping[str, str]) -> dict[str, Evolution]:
        """Claims are written without catching up first: reading back past them applies every earlier entry, so a
        seed another replica claimed meanwhile is seen to be theirs either way, and one round trip a batch is saved.
        A seed this replica already knows to be claimed needs no claim (its owner never changes)."""
        unclaimed = {seed: by for seed, by in claimants.items() if seed not in self._evolutions}
        if unclaimed:
            claims = [Evolution(seed_id=seed, claimant=by) for seed, by in unclaimed.items()]
            last = self._write_evolutions(claims)
            self._catch_up(until=last + 1)
            lost = [self._evolutions[seed] for seed, by in unclaimed.items() if self._evolutions[seed].claimant != by]
            if lost:
                log.info("evolver state: %d seed(s) were claimed by another replica first", len(lost))
                self._write_evolutions(lost)
        return {seed: self._evolutions[seed] for seed in claimants}

    def record(self, evolutions: Sequence[Evolution]) -> None:
        questions = [q for e in evolutions for q in e.questions]
        self._write_evolutions(evolutions, [(_QUESTION + q.id, q.model_dump_json().encode()) for q in questions])
        for evolution in evolutions:
            self._apply_evolution(evolution)
            for question in evolution.questions:
                self.index.add(question)

    def close(self) -> None:
        self._log.close()

    # -- the log ---------------------------------------------------------------------------------------------
    def _write_evolutions(self, evolutions: Sequence[Evolution], also: Sequence[tuple[str, bytes]] = ()) -> int:
        """`_write` the evolutions (and the entries `also`), keeping each parsed until it is read back."""
        entries = [(_SEED + e.seed_id, e.model_dump_json().encode()) for e in evolutions]
        last = self._write([*entries, *also])
        self._written.update(zip(entries, evolutions, strict=True))
        return last

    def _write(self, entries: Sequence[tuple[str, bytes]]) -> int:
        """Append entries; returns the offset of the last one (-1: none)."""
        return self._log.append([(key.encode(), value) for key, value in entries])

    def _catch_up(self, until: int | None = None) -> None:
        """Apply every entry at least up to offset `until` (exclusive; default: the end of the log now)."""
        for key, value in self._log.read(until):
            self._apply(key.decode(), value)

    def _apply(self, key: str, value: bytes) -> None:
        if key.startswith(_QUESTION):
            if not self.index.knows(key.removeprefix(_QUESTION)):  # ids are content hashes: a known id is no news
                self.index.add(Question.model_validate_json(value))
        elif key.startswith(_SEED):
            written = self._written.pop((key, value), None)
            self._apply_evolution(written or Evolution.model_validate_json(value))

    def _apply_evolution(self, evolution: Evolution) -> None:
        """First claim wins; later entries count only when they come from the owning claimant."""
        owner = self._evolutions.get(evolution.seed_id)
        if owner is None or (owner.claimant == evolution.claimant and not owner.done):
            self._evolutions[evolution.seed_id] = evolution
