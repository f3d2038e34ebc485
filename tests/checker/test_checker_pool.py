"""The worker pool: called from many threads at once, timeouts off the main thread, dead workers, closing."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from checker_testing import warm

from lema.checker import Checker, CheckItem, CheckResult
from lema.config import CheckerSettings
from lema.records import Task

PAIRS: list[tuple[str, str, Task, bool]] = [
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", "math", True),
    ("\\boxed{x^2-1}", "(x-1)(x+1)", "math", True),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", "math", True),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{3}", "math", False),
    ("The answer is 18.", "18", "gsm8k", True),
    ("The answer is 19.", "18", "gsm8k", False),
    ("The answer is (B).", "B", "mcq", True),
    ("\\boxed{2A+B}", "A", "mcq", False),
]


def test_many_threads_share_one_checker(checker: Checker) -> None:
    jobs = PAIRS * 3
    with ThreadPoolExecutor(max_workers=8) as threads:
        results = list(threads.map(lambda job: checker.check(job[0], job[1], job[2]), jobs))
    assert [r.correct for r in results] == [job[3] for job in jobs]


def test_concurrent_batches_keep_their_own_order(checker: Checker) -> None:
    batches = [[CheckItem(pair[0], pair[1], pair[2]) for pair in PAIRS[i:] + PAIRS[:i]] for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as threads:
        results = list(threads.map(checker.check_batch, batches))
    for batch, batch_results in zip(batches, results, strict=True):
        expected = {(p[0], p[1]): p[3] for p in PAIRS}
        assert [r.correct for r in batch_results] == [expected[(i.response, i.gold)] for i in batch]


def test_a_timeout_works_off_the_main_thread(quick_checker: Checker) -> None:
    warm(quick_checker)
    outcome: list[str] = []
    off_main = threading.Thread(
        target=lambda: outcome.append(quick_checker.check("\\boxed{(x+1)^{2000}}", "(x+2)^{2000}", "math").reason)
    )
    off_main.start()
    off_main.join(timeout=60)
    assert outcome == ["timeout"]
    assert quick_checker.check("\\boxed{x+1}", "1+x", "math").correct  # a replacement worker serves


def test_a_worker_that_dies_mid_check_gives_checker_error(quick_checker: Checker) -> None:
    warm(quick_checker)
    outcome: list[str] = []
    checking = threading.Thread(
        target=lambda: outcome.append(quick_checker.check("\\boxed{(x+1)^{2000}}", "(x+2)^{2000}", "math").reason)
    )
    checking.start()
    deadline = time.monotonic() + 120
    while checking.is_alive():  # kill whatever worker the check is waiting on, until the check gives up
        assert time.monotonic() < deadline, "the check never gave up on its killed workers"
        for worker in list(quick_checker._pool._workers):
            _kill(worker._pid)
        checking.join(timeout=0.05)
    assert outcome == ["checker_error"]


def test_workers_that_died_idle_are_replaced_before_use(quick_checker: Checker) -> None:
    warm(quick_checker)
    workers = list(quick_checker._pool._workers)
    for worker in workers:
        _kill(worker._pid)
    deadline = time.monotonic() + 30
    while any(worker.alive for worker in workers):
        assert time.monotonic() < deadline, "killed workers still count as alive after 30 s"
        time.sleep(0.01)
    warm(quick_checker)


def test_close_stops_the_workers_and_frees_every_waiting_thread() -> None:
    checker = Checker(CheckerSettings(workers=1, timeout_s=60))
    assert checker.check("\\boxed{x+1}", "1+x", "math").correct
    template = checker._pool._template
    assert template is not None
    pids = [worker._pid for worker in checker._pool._workers] + [template._process.pid]
    outcomes: list[str] = []

    def slow_check() -> None:
        try:
            outcomes.append(checker.check("\\boxed{(x+1)^{2000}}", "(x+2)^{2000}", "math").reason)
        except RuntimeError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=slow_check) for _ in range(3)]  # one busy on the worker, two waiting for it
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    checker.close()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["checker_error", "the checker is closed", "the checker is closed"]
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, "worker processes outlived close() by 30 s"
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="closed"):
        checker.check("\\boxed{x+1}", "1+x", "math")
    assert checker.check("The answer is 5.", "5", "gsm8k").correct  # the fast path needs no worker


def test_numbers_never_start_a_worker() -> None:
    with Checker(CheckerSettings()) as checker:
        checker.check_batch([CheckItem(p[0], p[1], p[2]) for p in PAIRS if p[2] != "math"])
        assert not checker._pool._workers


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_check_fast_decides_without_the_worker_processes() -> None:
    """It runs inline on the gRPC event loop, so it must never wait on a worker: even a closed checker answers."""
    closed = Checker(CheckerSettings(workers=1))
    closed.close()
    assert closed.check_fast(CheckItem("The answer is 18.", "18", "gsm8k")) == CheckResult(True, "18", "numeric_equal")
    assert closed.check_fast(CheckItem("\\boxed{x^2-1}", "(x-1)(x+1)", "math")) is None  # only Math-Verify can say
