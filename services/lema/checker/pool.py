"""Worker processes for symbolic checks, with a per-check deadline that holds when called from any thread.

Math-Verify's timeouts use SIGALRM, which only works in a main thread and cannot interrupt sympy while it is inside
C code (a huge integer power). So each check runs in a worker process (`worker.py`): the worker puts a deadline
around the check in its own main thread, and the caller waits a little longer and, if no answer came, kills the
worker and starts a fresh one. Either way the verdict is 'timeout' and the caller is free again.

Workers are plain `python -m lema.checker.worker` subprocesses talking over two pipes, not multiprocessing
children: those re-import the caller's main module, which breaks scripts without a `__main__` guard, and forking a
threaded server is unsafe. They start on the first symbolic check, so a checker that only sees numbers never
starts them, and each imports sympy once and then serves check after check.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

READY: Final = "ready"  # a worker's first message: imports are done, deadlines may start
_GRACE_S: Final = 0.5  # how long past its own deadline a worker may take to report a timeout before it is killed
_STARTUP_TIMEOUT_S: Final = 120.0  # imports on a loaded machine; not counted against a check's deadline
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])  # the directory holding `lema`, for the workers


class _Worker:
    def __init__(self) -> None:
        from_worker, worker_out = os.pipe()
        worker_in, to_worker = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "lema.checker.worker", str(worker_in), str(worker_out)],
            pass_fds=(worker_in, worker_out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the caller's stdout may be a JSONL stream: nothing may leak into it
            env=env,
        )
        os.close(worker_in)
        os.close(worker_out)
        self._inbox = Connection(from_worker, writable=False)
        self._outbox = Connection(to_worker, readable=False)
        self._ready = False

    def ask(self, gold: str, predicted: str, timeout_s: float) -> str | None:
        """The worker's reason, or None when it did not answer in time (it must then be replaced).

        Raises EOFError/OSError when the worker died.
        """
        if not self._ready:
            if not self._inbox.poll(_STARTUP_TIMEOUT_S):
                raise OSError(f"checker worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
            if self._inbox.recv() != READY:
                raise OSError("checker worker sent an unexpected greeting")
            self._ready = True
        self._outbox.send((gold, predicted, timeout_s))
        if not self._inbox.poll(timeout_s + _GRACE_S):
            return None
        reason: str = self._inbox.recv()
        return reason

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()
        self._inbox.close()
        self._outbox.close()


class SymbolicPool:
    """`workers` processes answering `compare(gold, predicted)` within `timeout_s` (+0.5 s), from any thread."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        self._size = workers
        self._timeout_s = timeout_s
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def compare(self, gold: str, predicted: str) -> str:
        """A reason: 'symbolic_equal', 'symbolic_mismatch', 'unparsable', 'timeout' or 'checker_error'."""
        worker = self._take()
        try:
            reason = worker.ask(gold, predicted, self._timeout_s)
        except (EOFError, OSError):
            self._give_back(worker, healthy=False)
            return "checker_error"
        self._give_back(worker, healthy=reason is not None)
        return reason or "timeout"

    def close(self) -> None:
        """Stop every worker; a check still running in another thread ends with 'checker_error'."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, set()
        for worker in workers:
            worker.stop()

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the checker is closed")
            if not self._started:
                self._started = True
                for _ in range(self._size):
                    self._idle.put(self._start_worker())
        worker = self._idle.get()
        while not worker.alive:  # died while idle (killed from outside, out of memory): replace it unasked
            self._give_back(worker, healthy=False)
            worker = self._idle.get()
        return worker

    def _give_back(self, worker: _Worker, healthy: bool) -> None:
        """Return a worker to the idle queue, or, if it hung or died, stop it and start its replacement."""
        if not healthy:
            worker.stop()
        with self._lock:
            if self._closed:
                return
            if not healthy:
                self._workers.discard(worker)
                worker = self._start_worker()
            self._idle.put(worker)

    def _start_worker(self) -> _Worker:
        worker = _Worker()
        self._workers.add(worker)
        return worker
