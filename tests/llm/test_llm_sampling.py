"""The transformers backend's per-row sampling pieces on small hand-made logits: exact, and fast to check."""

from __future__ import annotations

import math

import pytest
import torch

from lema.llm.transformers_backend import _nucleus, _Row, _SeededSampling, truncate_at_stop
from lema.records import GenerationParams


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("Step 1: x\nStep 2: y", ("\nStep 2",), ("Step 1: x", True)),
        ("a;b,c", (",", ";"), ("a", True)),  # the earliest stop wins, whatever its place in the list
        ("no stop here", ("###",), ("no stop here", False)),
        ("empty stops are ignored", ("",), ("empty stops are ignored", False)),
    ],
)
def test_truncate_at_stop(text: str, stop: tuple[str, ...], expected: tuple[str, bool]) -> None:
    assert truncate_at_stop(text, stop) == expected


def test_nucleus_keeps_the_smallest_set_reaching_top_p_in_any_token_order() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.5, 0.3, 0.15, 0.05]])
    kept = _nucleus(probs.log(), torch.tensor([[0.8], [0.81]])).isfinite()
    assert kept.tolist() == [[False, True, False, True], [True, True, True, False]]


def test_nucleus_always_keeps_the_most_likely_token() -> None:
    kept = _nucleus(torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([[1e-9]])).isfinite()
    assert kept.tolist() == [[False, True, False]]


def test_seeded_gumbel_sampling_follows_the_tempered_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature = 0.7
    rows = [_Row(0, seed, [], GenerationParams(temperature=temperature, seed=0)) for seed in range(4000)]
    picks = _SeededSampling(rows)(torch.empty(0), logits.repeat(len(rows), 1)).argmax(dim=-1)
    observed = torch.bincount(picks, minlength=4).float() / len(rows)
    expected = torch.softmax(logits / temperature, dim=-1)
    assert torch.allclose(observed, expected, atol=0.03), (observed, expected)


def test_each_row_depends_only_on_its_own_seed() -> None:
    logits = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    params = [GenerationParams(temperature=1.0, seed=seed) for seed in (3, 9, 3, 4, 9)]
    rows = [_Row(i, 0, [], p) for i, p in enumerate(params)]
    together = _SeededSampling(rows)(torch.empty(0), logits.clone())
    alone = [_SeededSampling([row])(torch.empty(0), logits[i : i + 1].clone())[0] for i, row in enumerate(rows)]
    assert all(torch.equal(together[i], alone[i]) for i in range(len(rows)))


def test_greedy_rows_pass_through_untouched() -> None:
    logits = torch.tensor([[0.5, math.pi, -1.0], [0.5, math.pi, -1.0]])
    rows = [_Row(0, 0, [], GenerationParams(temperature=0.0)), _Row(1, 0, [], GenerationParams(temperature=1.0))]
    scores = _SeededSampling(rows)(torch.empty(0), logits.clone())
    assert torch.equal(scores[0], logits[0])
    assert not torch.equal(scores[1], logits[1])
