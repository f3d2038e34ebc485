"""What `lema serve` does to its own process once start-up is over."""

from __future__ import annotations

import gc

from lema.runtime.serve import freeze_startup_objects


def test_objects_alive_after_start_up_are_out_of_the_collectors_reach() -> None:
    """Full collections must not walk the libraries and models loaded at start-up again and again."""
    start_up = [{"loaded": index} for index in range(10_000)]  # a model's tables, say
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(gc.get_objects()) + len(start_up) // 2
        assert not any(obj is start_up for obj in gc.get_objects())  # no generation holds them any more
    finally:
        gc.unfreeze()
