"""The evolver state's interface and its in-process implementation.

A seed (a question with a verified correction) may reach the evolver through several corrections, on several
partitions, hence several replicas. The first correction that *claims* a seed owns it: only the delivery of that
correction evolves it, however often it is redelivered (a crash, a rebalance), and any other correction of the same
seed is a no-op. The claim is taken before any LLM call; the outputs are recorded before they are published, so a
redelivered claimant publishes the recorded outputs again instead of evolving a second time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from lema.records import Drop, Question
from lema.stages.evolve import QuestionIndex


class Evolution(BaseModel):
    """One seed's claim and, once `done`, what its evolution produced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed_id: str
    claimant: str
    """Id of the correction whose delivery evolves the seed."""
    done: bool = False
    questions: tuple[Question, ...] = ()
    drops: tuple[Drop, ...] = ()


class EvolverState(Protocol):
    index: QuestionIndex
    """Every question remembered so far, by every replica."""

    def remember(self, questions: Sequence[Question]) -> None:
        """Add questions to the index, for every replica and for good."""
        ...

    def claim(self, claimants: Mapping[str, str]) -> dict[str, Evolution]:
        """For each seed id -> claiming correction id: the seed's owning claim (the first one ever taken)."""
        ...

    def record(self, evolutions: Sequence[Evolution]) -> None:
        """Record finished evolutions (`done`, with their outputs) before their outputs are published."""
        ...

    def close(self) -> None: ...


class MemoryEvolverState:
    """The state of one process: what `lema run` needs, where a single evolver sees every record."""

    def __init__(self, threshold: float) -> None:
        self.index = QuestionIndex(threshold)
        self._evolutions: dict[str, Evolution] = {}

    def remember(self, questions: Sequence[Question]) -> None:
        for question in questions:
            self.index.add(question)

    def claim(self, claimants: Mapping[str, str]) -> dict[str, Evolution]:
        for seed_id, claimant in claimants.items():
            self._evolutions.setdefault(seed_id, Evolution(seed_id=seed_id, claimant=claimant))
        return {seed_id: self._evolutions[seed_id] for seed_id in claimants}

    def record(self, evolutions: Sequence[Evolution]) -> None:
        for evolution in evolutions:
            self._evolutions[evolution.seed_id] = evolution
        self.remember([q for evolution in evolutions for q in evolution.questions])

    def close(self) -> None:
        self._evolutions.clear()
