"""A symbolic-check worker process: `python -m lema.checker.worker IN_FD OUT_FD` (started by `pool.py`).

It reads (gold, predicted, timeout_s) requests and answers each with a reason. The deadline is a SIGALRM timer,
which works here because the check runs in this process's main thread; it raises a BaseException so that no
`except Exception` inside sympy or Math-Verify can swallow it.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection
from types import FrameType

from lema.checker.pool import READY


class _Deadline(BaseException):
    pass


def _raise_deadline(signum: int, frame: FrameType | None) -> None:
    raise _Deadline


def serve(inbox: Connection, outbox: Connection) -> None:
    """Answer requests until the parent closes its end of the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops its workers
    signal.signal(signal.SIGALRM, _raise_deadline)
    from lema.checker.symbolic import compare_latex

    compare_latex("x+1", "1+x")  # load the parser before reporting ready, so a first check is not slower
    outbox.send(READY)
    while True:
        try:
            gold, predicted, timeout_s = inbox.recv()
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
        outbox.send(reason)


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
