"""The template process that forks symbolic-check workers: `python -m lema.checker.worker SOCKET_FD [--no-warm-up]`
(see `pool.py`).

The template imports sympy and Math-Verify, builds the LaTeX grammar, reports ready, then forks one worker per request
it receives (warming the other answer shapes while it waits); each request carries the socket the new worker serves
on. A worker reads (gold, predicted, timeout_s) requests and answers each with a reason. Its deadline is a SIGALRM
timer, which works because the check runs in the worker's main thread; the alarm raises a BaseException so that no
`except Exception` in sympy can swallow it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
from multiprocessing.connection import Connection
from types import FrameType

from lema.checker.pool import FORK, READY


class _Deadline(BaseException):
    pass


def _raise_deadline(signum: int, frame: FrameType | None) -> None:
    raise _Deadline


def run_template(control: socket.socket, warm_up: bool = True) -> None:
    """Fork a worker for each request until the pool closes its end of the socket.

    The template reports ready once the LaTeX grammar is built, so that a one-off command's first workers start at
    once; with `warm_up` it warms the other answer shapes while no request waits, so later (replacement) workers
    start warm.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops its workers
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # exited workers are reaped by the kernel
    from lema.checker.symbolic import warm_up_steps

    steps = warm_up_steps()
    next(steps)
    control.sendall(READY)
    while True:
        while warm_up and not select.select([control], [], [], 0)[0] and next(steps, None) is not None:
            pass
        message, fds, _, _ = socket.recv_fds(control, 1, 1)
        if message != FORK or not fds:
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                serve(Connection(fds[0]))
            finally:
                os._exit(0)  # never return into the template's loop
        os.close(fds[0])
        control.sendall(pid.to_bytes(4, "big"))


def serve(connection: Connection) -> None:
    """A worker: answer requests until the pool closes the connection."""
    from lema.checker.symbolic import compare_latex

    signal.signal(signal.SIGALRM, _raise_deadline)
    while True:
        try:
            gold, predicted, timeout_s = connection.recv()
        except EOFError:
            return
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
                reason = compare_latex(gold, predicted)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:
            reason = "timeout"
        except Exception:  # a sympy failure on strange input is a verdict, not a dead worker
            reason = "checker_error"
        connection.send(reason)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the pool closed first: nothing left to serve
        run_template(socket.socket(fileno=int(sys.argv[1])), warm_up=sys.argv[2:] != ["--no-warm-up"])
