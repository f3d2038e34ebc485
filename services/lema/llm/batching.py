"""Cross-request batching: one engine thread per in-process backend, fed by every caller in the process.

gRPC handler threads, the Kafka worker and `lema serve-llm`'s HTTP requests all call `generate` on the same backend
object; each call becomes a job on a queue, and the engine thread hands every job waiting (up to
`max_batch_requests`, after waiting at most `batch_wait_ms` for more to arrive) to the wrapped backend in one
`generate` call. Since a completion depends only on its own request and seed, merging never changes a result; it
only turns many small generations into one batch. The engine thread is also the only thread that ever touches the
wrapped engine, which is what vLLM's `LLM` (not thread-safe) needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from lema.llm.base import Completion, GenerationRequest, LLMBackend, LLMError, TokenUsage

log = logging.getLogger(__name__)

Results = list[list[Completion]]


@dataclass
class _Job:
    requests: Sequence[GenerationRequest]
    future: Future[Results] = field(default_factory=Future)


class BatchingBackend:
    def __init__(self, backend: LLMBackend, max_batch_requests: int, batch_wait_ms: float) -> None:
        self._backend = backend
        self._max_batch = max_batch_requests
        self._wait_s = batch_wait_ms / 1000
        self._pending: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._running: list[_Job] = []
        self.batches = 0
        """How many `generate` calls the wrapped backend has received (read by tests and benchmarks)."""
        self._engine = threading.Thread(target=self._serve, name=f"lema-engine-{backend.model}", daemon=True)
        self._engine.start()

    @property
    def model(self) -> str:
        return self._backend.model

    @property
    def usage(self) -> TokenUsage:
        return self._backend.usage

    def generate(self, requests: Sequence[GenerationRequest]) -> Results:
        return self.submit(requests).result() if requests else []

    def submit(self, requests: Sequence[GenerationRequest]) -> Future[Results]:
        """Queue `requests` for the engine's next batch; the future holds their completions, in order."""
        job = _Job(requests)
        with self._changed:
            if self._stopping:
                raise LLMError(f"model {self.model!r}: the backend is closed")
            self._pending.append(job)
            self._changed.notify()
        return job.future

    def stop(self) -> None:
        """Fail every call not finished yet and end the engine thread; the wrapped backend stays open.

        A batch still generating cannot be interrupted: its callers get an `LLMError` now (nothing of it is kept, so
        a resumed run generates it again), and the engine thread, a daemon, ends when the batch returns. That lets
        Ctrl-C end an embedded run at once rather than after the model's current batch.
        """
        with self._changed:
            self._stopping = True
            for job in [*self._running, *self._pending]:
                if not job.future.done():
                    job.future.set_exception(LLMError(f"model {self.model!r}: the backend closed before answering"))
            self._pending.clear()
            self._changed.notify()

    def close(self) -> None:
        """Stop, wait for an idle engine thread to end, then close the wrapped backend.

        Joining matters: a thread that ran torch kernels and is still alive when the interpreter exits makes
        libstdc++ abort the process ("terminate called without an active exception") after a successful run.
        """
        self.stop()
        with self._changed:
            idle = not self._running
        if idle:
            self._engine.join()
        self._backend.close()

    def _serve(self) -> None:
        while batch := self._next_batch():
            self._run(batch)
            with self._changed:
                self._running = []

    def _next_batch(self) -> list[_Job]:
        """The oldest job plus whatever joins it within the wait, up to the batch size; [] once stopped and empty."""
        with self._changed:
            while not self._pending and not self._stopping:
                self._changed.wait()
            if not self._pending:
                return []
            batch = [self._pending.popleft()]
            size = len(batch[0].requests)
            deadline = time.monotonic() + self._wait_s
            while size < self._max_batch:
                if self._pending and size + len(self._pending[0].requests) <= self._max_batch:
                    job = self._pending.popleft()
                    batch.append(job)
                    size += len(job.requests)
                    continue
                remaining = deadline - time.monotonic()
                if self._pending or self._stopping or remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._running = batch
            return batch

    def _run(self, batch: list[_Job]) -> None:
        """One `generate` for the whole batch; if it fails, each job is retried alone so a failure stays its own."""
        self.batches += 1
        try:
            results = self._backend.generate([request for job in batch for request in job.requests])
        except Exception as exc:
            if len(batch) == 1 or self._stopping:
                for job in batch:
                    self._settle(job, exc)
                return
            log.warning(
                "model %r: a batch of %d calls failed (%s); running them one by one", self.model, len(batch), exc
            )
            for job in batch:
                self._run([job])
            return
        start = 0
        for job in batch:
            self._settle(job, results[start : start + len(job.requests)])
            start += len(job.requests)

    def _settle(self, job: _Job, outcome: Results | Exception) -> None:
        with self._changed:  # `stop` may have failed the job meanwhile
            if job.future.done():
                return
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
