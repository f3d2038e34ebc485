"""Checks per second of `lema.checker` against raw Math-Verify `parse` + `verify`, on the same pairs in one run.

Two sets of (response, gold) pairs, half right and half wrong:
- GSM8K-style numeric pairs: each real GSM8K solution in examples/data rewritten as a model response ending
  "The answer is N." (N perturbed for every other one), gold the bare number (the first 200 only warm both sides up);
- MATH-style LaTeX pairs: responses ending in `\\boxed{}` with fractions, roots, pi, intervals, tuples, sets,
  polynomials, equations, matrices and text, stated in an equivalent or a wrong form, gold in its usual form.

Math-Verify runs as its README shows, in this process with its own timeouts. lema runs `check_batch` with its pool
of `--workers` processes (started and warmed before timing, as in a long-running service). Throughput ratio =
lema checks/s / Math-Verify checks/s (targets: >= 20x numeric, >= 1x LaTeX). Latency is per single `check` call, on
a second warm checker, so that its workers have cached nothing from the batch.

Start-up: a one-off `lema check` command on a JSONL file against a plain Math-Verify loop (a fresh Python process
that imports Math-Verify and runs `parse` + `verify` per line) over the same file, both timed from process start to
exit, three times each in turn (medians). Files of 20, 100 and 800 lines: MATH-style answers as they come (mostly
numbers, a fifth LaTeX) and LaTeX-only pairs. Ratio = lema seconds / loop seconds (target: <= 1, never slower).

    python benchmarks/bench_checker.py [--workers 2] [--math-pairs 400] [--startup-lines 20,100,800] [--only-startup]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from math_verify import parse, verify

from lema.checker import Checker, CheckItem, extract_gold
from lema.checker.numbers import parse_number
from lema.config import CheckerSettings
from lema.records import Task

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
Pair = tuple[str, str]  # (response, gold)


def gsm8k_pairs(path: Path) -> list[Pair]:
    pairs = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        solution = json.loads(line)["answer"]
        body, gold = solution.rsplit("####", 1)
        gold = gold.strip().replace(",", "")
        stated = gold if index % 2 == 0 else str(int(gold) + 1)
        steps = re.sub(r"<<[^>]*>>", "", body).strip()
        pairs.append((f"Let's think step by step.\n{steps}\nThe answer is {stated}.", gold))
    return pairs


def math_pairs(count: int, seed: int = 0) -> list[Pair]:
    """MATH-style answers: (gold, an equivalent spelling, a wrong one) from templates with random numbers."""
    rng = random.Random(seed)
    makers: list[Callable[[], tuple[str, str, str]]] = [
        lambda: _fraction(rng),
        lambda: (f"{(k := rng.randint(2, 9))}\\sqrt{{{(m := rng.choice([2, 3, 5, 7]))}}}", f"\\sqrt{{{k * k * m}}}",
                 f"{k}\\sqrt{{{m + 4}}}"),
        lambda: (f"\\frac{{{(a := rng.randint(1, 9))}\\pi}}{{{(b := rng.randint(2, 9))}}}", f"\\frac{{{a}}}{{{b}}}\\pi",
                 f"\\frac{{{a + b}\\pi}}{{{b}}}"),
        lambda: (f"({(a := rng.randint(-9, 0))}, {(b := rng.randint(1, 9))}]", f"({a},{b}]", f"[{a}, {b}]"),
        lambda: (f"({(a := rng.randint(1, 9))}, {(b := rng.randint(10, 19))})", f"\\left({a},{b}\\right)",
                 f"({b}, {a})"),
        lambda: (f"\\{{{(a := rng.randint(1, 5))}, {a + 2}, {a + 4}\\}}", f"\\{{{a + 4}, {a}, {a + 2}\\}}",
                 f"\\{{{a}, {a + 2}, {a + 5}\\}}"),
        lambda: (f"x^2 + {(p := rng.randint(1, 5)) + (q := rng.randint(1, 5))}x + {p * q}", f"(x+{p})(x+{q})",
                 f"(x+{p})(x+{q + 1})"),
        lambda: (f"y = {(a := rng.randint(2, 9))}x + {(b := rng.randint(1, 9))}", f"y = {b} + {a}x", f"y = {a}x - {b}"),
        lambda: (f"\\begin{{pmatrix}} {(a := rng.randint(1, 9))} & {a + 1} \\\\ {a + 2} & {a + 3} \\end{{pmatrix}}",
                 f"\\begin{{bmatrix}}{a}&{a + 1}\\\\{a + 2}&{a + 3}\\end{{bmatrix}}",
                 f"\\begin{{pmatrix}} {a} & {a + 1} \\\\ {a + 3} & {a + 2} \\end{{pmatrix}}"),
        lambda: ("\\text{even}", "\\text{even}", "\\text{odd}"),
        lambda: (str(n := rng.randint(10, 999)), str(n), str(n + 1)),
    ]  # fmt: skip
    pairs = []
    for index in range(count):
        gold, equivalent, wrong = makers[index % len(makers)]()
        stated = equivalent if index % 2 == 0 else wrong
        response = (
            "We set up the problem and simplify step by step.\n"
            f"Substituting gives $t = {rng.randint(2, 30)}$ and then $2t + 1 = {rng.randint(5, 61)}$.\n"
            f"Therefore the final answer is $\\boxed{{{stated}}}$."
        )
        pairs.append((response, gold))
    return pairs


def _fraction(rng: random.Random) -> tuple[str, str, str]:
    numerator, denominator = rng.randint(1, 20), rng.choice([3, 7, 9, 11, 13])
    return (
        f"\\frac{{{numerator}}}{{{denominator}}}",
        f"\\dfrac{{{2 * numerator}}}{{{2 * denominator}}}",
        (f"\\frac{{{numerator + 1}}}{{{denominator}}}"),
    )


def math_verify_check(pair: Pair) -> bool:
    """Math-Verify as its README shows: gold in LaTeX delimiters (a bare '(1, 2]' parses as '2'), response as is."""
    response, gold = pair
    return verify(parse(f"${gold}$"), parse(response))


def timed(function: Callable[[Pair], object], pairs: list[Pair]) -> tuple[float, list[float]]:
    """(total seconds, per-pair seconds) of calling `function` on each pair in turn."""
    latencies = []
    for pair in pairs:
        started = time.perf_counter()
        function(pair)
        latencies.append(time.perf_counter() - started)
    return sum(latencies), latencies


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def compare(name: str, pairs: list[Pair], warm_up: list[Pair], task: Task, workers: int, target: float) -> None:
    """Both sides warm (a long-running service is) on other pairs of the same kinds, then timed on `pairs`."""
    for pair in warm_up:
        math_verify_check(pair)
    math_verify_s, math_verify_latencies = timed(math_verify_check, pairs)
    items = [CheckItem(response, gold, task) for response, gold in pairs]
    with _warm_checker(workers, warm_up, task) as checker:
        started = time.perf_counter()
        results = checker.check_batch(items)
        lema_s = time.perf_counter() - started
    with _warm_checker(workers, warm_up, task) as checker:  # fresh workers: nothing cached from the batch
        _, lema_latencies = timed(lambda pair: checker.check(pair[0], pair[1], task), pairs)
    agree = sum(r.correct == math_verify_check(p) for r, p in zip(results, pairs, strict=True))
    lema_rate, math_verify_rate = len(pairs) / lema_s, len(pairs) / math_verify_s
    print(f"\n{name}: {len(pairs)} pairs, {sum(r.correct for r in results)} judged correct by lema")
    print(f"  throughput  lema {lema_rate:10.0f} checks/s   Math-Verify {math_verify_rate:8.0f} checks/s")
    ratio = lema_rate / math_verify_rate
    print(f"  ratio       {ratio:.1f}x (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})")
    for label, latencies in (("lema", lema_latencies), ("Math-Verify", math_verify_latencies)):
        p50, p99 = percentile(latencies, 0.50) * 1e3, percentile(latencies, 0.99) * 1e3
        print(f"  latency     {label:12} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms")
    print(f"  verdicts    lema and Math-Verify agree on {agree}/{len(pairs)}")


@contextmanager
def _warm_checker(workers: int, warm_up: list[Pair], task: Task) -> Iterator[Checker]:
    """A checker whose workers are up and warm, with lema's caches of parsed gold answers emptied (every sample of
    a question shares one gold, but here each pair's gold must be parsed as if new)."""
    with Checker(CheckerSettings(workers=workers)) as checker:
        checker.check_batch([CheckItem(response, gold, task) for response, gold in warm_up])
        extract_gold.cache_clear()
        parse_number.cache_clear()
        yield checker


# The peer of `lema check`: what a user would write with Math-Verify alone.
_MATH_VERIFY_LOOP = """
import json, sys
from math_verify import parse, verify
with open(sys.argv[1], encoding="utf-8") as lines:
    verdicts = [verify(parse(row["gold"]), parse(row["response"])) for row in map(json.loads, lines)]
print(sum(map(bool, verdicts)))
"""


def mixed_math_pairs(count: int, seed: int = 2) -> list[Pair]:
    """MATH-style answers as a test set has them: four in five are numbers (integers, fractions, decimals, percents),
    one in five is other LaTeX."""
    rng = random.Random(seed)
    latex = math_pairs(count // 5 + 1, seed=seed)
    pairs: list[Pair] = []
    for index in range(count):
        if index % 5 == 4:
            pairs.append(latex[index // 5])
            continue
        value = rng.randint(-500, 5_000)
        gold, stated = rng.choice(
            [
                (str(value), str(value)),
                (f"\\frac{{{value}}}{{7}}", f"\\dfrac{{{value}}}{{7}}"),
                (f"{value}\\%", str(value)),
            ]
        )
        if index % 2:
            stated = str(value + 1)
        pairs.append(
            (f"We compute step by step and find the result.\nThe final answer is $\\boxed{{{stated}}}$.", gold)
        )
    return pairs


def startup(name: str, pairs: list[Pair], workers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source, loop = Path(folder) / "in.jsonl", Path(folder) / "loop.py"
        source.write_text("".join(json.dumps({"response": r, "gold": g}) + "\n" for r, g in pairs), encoding="utf-8")
        loop.write_text(_MATH_VERIFY_LOOP, encoding="utf-8")
        lema = [str(Path(sys.executable).with_name("lema")), "check", "--task", "math", "-i", str(source)]
        lema += ["-o", str(Path(folder) / "out.jsonl"), "--set", f"checker.workers={workers}"]
        timings = [(_run_seconds(lema), _run_seconds([sys.executable, str(loop), str(source)])) for _ in range(3)]
        lema_s = statistics.median(lema for lema, _ in timings)
        loop_s = statistics.median(loop for _, loop in timings)
    print(
        f"{name} ({len(pairs)} lines): lema check {lema_s:.2f} s, Math-Verify loop {loop_s:.2f} s, "
        f"ratio {lema_s / loop_s:.2f} (<= 1 wanted)"
    )


def _run_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="lema's symbolic worker processes")
    parser.add_argument("--math-pairs", type=int, default=400)
    parser.add_argument("--startup-lines", default="20,100,800", help="sizes of the start-up files, comma-separated")
    parser.add_argument("--only-startup", action="store_true", help="run only the start-up comparison")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for lines in map(int, args.startup_lines.split(",")):
        startup("MATH-style answers, one-off command", mixed_math_pairs(lines), args.workers)
        startup("LaTeX-only answers, one-off command", math_pairs(lines, seed=3), args.workers)
    if args.only_startup:
        return
    numeric = gsm8k_pairs(EXAMPLE_DATA / "gsm8k_test.jsonl") + gsm8k_pairs(EXAMPLE_DATA / "gsm8k_train.jsonl")
    compare("GSM8K-style numeric pairs", numeric[200:], numeric[:200], "gsm8k", args.workers, 20)
    latex = math_pairs(args.math_pairs, seed=1)
    compare("MATH-style LaTeX pairs", latex, math_pairs(100, seed=0), "math", args.workers, 1)


if __name__ == "__main__":
    main()
