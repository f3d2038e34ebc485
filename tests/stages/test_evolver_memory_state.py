"""The in-process evolver state: first claim wins, recorded evolutions are what a redelivery republishes."""

from __future__ import annotations

from lema.evolver_state import Evolution, MemoryEvolverState
from lema.records import Drop, Question

SEED = Question.create("A farmer has 3 pens with 4 goats each. How many goats are there?", "12", "gsm8k", "t:1")


def test_the_first_claim_owns_a_seed_and_its_recorded_outputs() -> None:
    state = MemoryEvolverState(threshold=0.85)
    assert state.claim({SEED.id: "c-1"}) == {SEED.id: Evolution(seed_id=SEED.id, claimant="c-1")}
    assert state.claim({SEED.id: "c-2"})[SEED.id].claimant == "c-1"
    child = Question.create("A farmer has 5 pens with 2 cows each. How many cows are there?", "10", "gsm8k", "t:2")
    drop = Drop(stage="evolve", reason="no_majority", record_id="e-1", detail="{}")
    done = Evolution(seed_id=SEED.id, claimant="c-1", done=True, questions=(child,), drops=(drop,))
    state.record([done])
    assert state.claim({SEED.id: "c-1"})[SEED.id] == done
    assert state.index.knows(child.id)
    assert state.index.duplicate_of("A farmer has 9 pens with 1 cows each. How many cows are there?") == (
        "near_duplicate",
        child.id,
    )
