"""The evolver's state: every question seen (exact and near-duplicate index) and what each seed's evolution produced.

`memory` keeps it in the process (`lema run`, tests); `kafka` keeps it in a compacted topic that every evolver
replica reads in full before serving and tails afterwards, so it survives restarts and is the same for all replicas.
"""

from __future__ import annotations

from lema.config import BusSettings
from lema.evolver_state.base import Evolution, EvolverState, MemoryEvolverState


def create_evolver_state(bus: BusSettings, threshold: float, client_id: str) -> EvolverState:
    """The state the bus implies: a Kafka bus means replicas in other processes, so the state lives on the broker."""
    if bus.kind == "kafka":
        from lema.evolver_state.kafka import KafkaEvolverState

        return KafkaEvolverState(bus, threshold, client_id)
    return MemoryEvolverState(threshold)


__all__ = ["Evolution", "EvolverState", "MemoryEvolverState", "create_evolver_state"]
