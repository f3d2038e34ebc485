"""The evolver's state as history grows: near-duplicate lookup cost and restart (restore) time vs known questions.

Lookup: `QuestionIndex.duplicate_of` (exact prefix filter: reads the postings of the |S| - ceil(t|S|) + 1 rarest
probe bigrams) against the plain inverted index it replaced (the union of the postings of *every* probe bigram),
on the same synthetic GSM8K-like questions: shared template phrases ("how many", "in total") plus random names,
objects and numbers. Ratio = microseconds per lookup at the largest N / at the smallest N (flat = independent of
history), and plain / prefix at each N. Both must return the same answers; the script checks it.

Restore (`--restore`): a local Tansu broker, N questions written to the compacted state topic, then the seconds a
new `KafkaEvolverState` takes to read them all back (what an evolver restart costs before it serves).

    python benchmarks/bench_evolver_state.py [--sizes 1000 10000 100000] [--probes 300] [--questions F] [--restore]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

from lema.records import Question
from lema.stages.evolve import QuestionIndex, _shingles

NAMES = [f"{a}{b}" for a in ("Al", "Be", "Ca", "Da", "El", "Fi", "Go", "Ha") for b in ("na", "ro", "ki", "mu", "te")]
THINGS = ["apples", "pens", "books", "cows", "marbles", "cookies", "tickets", "boxes", "stamps", "shells", "cards"]
PLACES = ["market", "school", "farm", "library", "bakery", "garden", "museum", "zoo", "harbor", "station"]
VERBS = ["buys", "sells", "gives away", "finds", "loses", "packs", "collects", "orders", "bakes", "paints"]


def question(rng: random.Random, i: int) -> Question:
    name, other = rng.sample(NAMES, 2)
    thing, more = rng.sample(THINGS, 2)
    text = (
        f"{name} goes to the {rng.choice(PLACES)} with {rng.randint(2, 90)} {thing}. {name} {rng.choice(VERBS)} "
        f"{rng.randint(2, 40)} {thing} and {rng.choice(VERBS)} {rng.randint(2, 9)} {more} for {other}. "
        f"How many {rng.choice([thing, more])} does {name} have in total?"
    )
    return Question.create(text, "1", "gsm8k", f"bench:{i}")


def plain_lookup(index: QuestionIndex, text: str) -> tuple[str, str] | None:
    """The replaced lookup: every question sharing any bigram is a candidate."""
    shingles = _shingles(text)
    candidates = set().union(*(index._postings.get(s, set()) for s in shingles))
    for known in sorted(candidates):
        other = index._shingles[known]
        if len(shingles & other) / len(shingles | other) >= index.threshold:
            return "near_duplicate", known
    return None


def time_per_lookup(lookup: object, index: QuestionIndex, probes: list[str]) -> tuple[float, list[object]]:
    assert callable(lookup)
    started = time.perf_counter()
    answers = [lookup(index, text) if lookup is plain_lookup else index.duplicate_of(text) for text in probes]
    return (time.perf_counter() - started) / len(probes) * 1e6, answers


def bench_lookup(sizes: list[int], probes: int, threshold: float, questions: Path | None) -> None:
    rng = random.Random(7)
    if questions is None:
        pool = [question(rng, i) for i in range(max(sizes))]
        texts = [question(rng, -i).text for i in range(1, probes + 1)]
    else:
        lines = questions.read_text().splitlines()
        real = [
            Question.create(json.loads(line)["question"], "1", "gsm8k", f"{questions}:{n}")
            for n, line in enumerate(lines)
        ]
        pool, texts = real[:-probes], [q.text for q in real[-probes:]]
        sizes = [size for size in sizes if size <= len(pool)]
    print(f"{'N':>8} {'prefix us':>10} {'plain us':>10} {'plain/prefix':>13}")
    firsts: tuple[float, float] | None = None
    index, added = QuestionIndex(threshold), 0
    for size in sorted(sizes):
        for q in itertools.islice(pool, added, size):
            index.add(q)
        added = size
        prefix_us, prefix_answers = time_per_lookup(QuestionIndex.duplicate_of, index, texts)
        plain_us, plain_answers = time_per_lookup(plain_lookup, index, texts)
        assert prefix_answers == plain_answers, "the prefix filter changed an answer"
        firsts = firsts or (prefix_us, plain_us)
        print(f"{size:>8} {prefix_us:>10.1f} {plain_us:>10.1f} {plain_us / prefix_us:>13.1f}")
    assert firsts is not None
    print(
        f"growth smallest->largest N: prefix {prefix_us / firsts[0]:.1f}x, plain {plain_us / firsts[1]:.1f}x "
        f"({sum(a is not None for a in prefix_answers)} of {len(texts)} probes were near duplicates)"
    )


def bench_restore(sizes: list[int], threshold: float) -> None:
    from lema.config import BusSettings
    from lema.evolver_state.kafka import KafkaEvolverState
    from lema.runtime.infra import LocalBroker

    rng = random.Random(11)
    with LocalBroker() as broker:
        print(f"{'N':>8} {'restore s':>10} {'us/question':>12}")
        for size in sorted(sizes):
            bus = BusSettings(kind="kafka", bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"b{size}.")
            writer = KafkaEvolverState(bus, threshold, "bench-writer")
            for start in range(0, size, 5000):
                writer.remember([question(rng, i) for i in range(start, min(size, start + 5000))])
            writer.close()
            started = time.perf_counter()
            reader = KafkaEvolverState(bus, threshold, "bench-reader")
            seconds = time.perf_counter() - started
            assert len(reader.index) == size, len(reader.index)
            reader.close()
            print(f"{size:>8} {seconds:>10.2f} {seconds / size * 1e6:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--questions", type=Path, help="a GSM8K-format JSONL file to use instead of synthetic text")
    parser.add_argument("--restore", action="store_true", help="also time restoring the state from a local broker")
    args = parser.parse_args()
    bench_lookup(args.sizes, args.probes, args.threshold, args.questions)
    if args.restore:
        bench_restore(args.sizes, args.threshold)


if __name__ == "__main__":
    main()
