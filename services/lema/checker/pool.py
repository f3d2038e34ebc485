"""Worker processes for symbolic checks, with a per-check deadline that holds when called from any thread.

Math-Verify's timeouts use SIGALRM, which only works in a main thread and cannot interrupt sympy while it is inside
C code (a huge integer power). So each check runs in a worker process: the worker puts a deadline around the check
in its own main thread, and the caller waits a little longer and, if no answer came, kills the worker and takes a
fresh one. Either way the verdict is 'timeout' and the caller is free again.

Workers are forked by a "template" process (`python -m lema.checker.worker`) that has imported sympy and parsed one
answer of each shape once; a fork starts warm in milliseconds, so a killed worker costs nothing to replace. The
template is a plain subprocess, not a multiprocessing child (those re-import the caller's main module, which breaks
scripts without a `__main__` guard), and it is single-threaded, so forking it is safe where forking a threaded
server would not be. It starts when the first symbolic check is found (`start`), while the caller goes on deciding the
rest on the fast paths; a checker that only ever sees numbers never starts it. A caller that knows symbolic checks
are coming (`lema check --task math`) may start a `WorkerTemplate` before anything else and hand it to the pool.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

READY: Final = b"r"  # the template's first message: imports and warm-up are done
FORK: Final = b"f"  # a request to the template, carrying the new worker's socket
_GRACE_S: Final = 0.5  # how long past its own deadline a worker may take to report a timeout before it is killed
_STARTUP_TIMEOUT_S: Final = 180.0  # imports and warm-up on a loaded machine; never counted against a check
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])  # the directory holding `lema`, for the template


class _Worker:
    """One forked worker: its pid (to kill it) and its end of a socket (to ask it)."""

    def __init__(self, pid: int, connection: Connection) -> None:
        self._pid = pid
        self._connection = connection

    def ask(self, gold: str, predicted: str, timeout_s: float) -> str | None:
        """The worker's reason, or None when it did not answer in time. Raises EOFError/OSError if it died."""
        self._connection.send((gold, predicted, timeout_s))
        if not self._connection.poll(timeout_s + _GRACE_S):
            return None
        reason: str = self._connection.recv()
        return reason

    @property
    def alive(self) -> bool:
        """An idle worker never writes, so a readable socket means it is closed: the worker died."""
        return not self._connection.poll(0)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        self._connection.close()


class WorkerTemplate:
    """The warmed-up process that forks workers; it reaps them itself, and exits when its socket closes.
    Constructing one starts it without waiting: it imports sympy and Math-Verify while the caller goes on.

    `warm_up=False` for a one-off command: its workers are forked at once and serve to the end, so warming answer
    shapes for later replacement workers would only take a core from them (~10% of a short file's time on 2 cores).
    """

    def __init__(self, warm_up: bool = True) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "lema.checker.worker", str(theirs.fileno()), *([] if warm_up else ["--no-warm-up"])],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the caller's stdout may be a JSONL stream: nothing may leak into it
            env=env,
        )
        theirs.close()
        self._socket = ours
        self._ready = False

    def fork(self) -> _Worker:
        """A new warm worker. Raises OSError when the template died or did not start in time."""
        if not self._ready:
            self._socket.settimeout(_STARTUP_TIMEOUT_S)
            if self._socket.recv(1) != READY:
                raise OSError(f"the checker's template process exited with code {self._process.poll()}")
            self._socket.settimeout(None)
            self._ready = True
        ours, theirs = socket.socketpair()
        with theirs:
            socket.send_fds(self._socket, [FORK], [theirs.fileno()])
        pid = int.from_bytes(_receive_exactly(self._socket, 4), "big")
        return _Worker(pid, Connection(ours.detach()))

    def stop(self) -> None:
        self._socket.close()
        self._process.kill()
        self._process.wait()


class SymbolicPool:
    """`workers` processes answering `compare(gold, predicted)` within `timeout_s` (+0.5 s), from any thread."""

    def __init__(self, workers: int, timeout_s: float, template: WorkerTemplate | None = None) -> None:
        """`template`: one already started, which the pool now owns (stops on `close`)."""
        self._size = workers
        self._timeout_s = timeout_s
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()  # None: closed, wake the next waiter
        self._workers: set[_Worker] = set()
        self._template = template
        self._lock = threading.Lock()
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
        """Stop every worker and the template; a check still running in another thread ends with 'checker_error'."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, set()
            template, self._template = self._template, None
        self._idle.put(None)
        for worker in workers:
            worker.stop()
        if template is not None:
            template.stop()

    def start(self) -> None:
        """Start the template now, without waiting for it: a caller that knows symbolic checks are coming lets the
        template import and warm up while it decides the rest on the fast paths."""
        with self._lock:
            if self._template is None and not self._closed:
                self._template = WorkerTemplate()

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the checker is closed")
            if not self._workers:
                if self._template is None:
                    self._template = WorkerTemplate()
                for _ in range(self._size):
                    self._idle.put(self._start_worker())
        while True:
            worker = self._idle.get()
            if worker is None:  # closed while this thread waited
                self._idle.put(None)
                raise RuntimeError("the checker is closed")
            if worker.alive:
                return worker
            self._give_back(worker, healthy=False)  # died while idle (killed, out of memory): replace it unasked

    def _give_back(self, worker: _Worker, healthy: bool) -> None:
        """Return a worker to the idle queue, or, if it hung or died, stop it and queue a fresh one instead."""
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
        """Fork a worker (called with the lock held); a template that died is replaced once."""
        assert self._template is not None
        try:
            worker = self._template.fork()
        except OSError:
            self._template.stop()
            self._template = WorkerTemplate()
            worker = self._template.fork()
        self._workers.add(worker)
        return worker


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise OSError("the checker's template process closed its socket")
        data += chunk
    return data
