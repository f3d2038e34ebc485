"""The topic flow: each worker consumes records from topics, calls a stage, and returns messages to publish.

    questions -> sampler -> paths -> checker -> cot (right) / mistakes (wrong) -> corrector -> corrections
    corrections -> checker (verify) -> corrections.verified -> dataset-writer, evolver -> questions (next round)

Workers are pure apart from their LLM and checker calls: the embedded runtime drives them over an in-process bus,
the Kafka runtime over consumer groups, with the same code.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

from lema.bus.base import Message, Topics
from lema.checker import Checker
from lema.config import LemaSettings, LLMSettings
from lema.evolver_state import EvolverState, create_evolver_state
from lema.llm.base import LLMBackend
from lema.records import Attempt, CorrectedAttempt, Drop, Question, Record
from lema.stages.check import check_attempts
from lema.stages.correct import correct_attempts
from lema.stages.dataset import TableRow, table_rows
from lema.stages.evolve import evolve_by_seed
from lema.stages.sample import sample_questions
from lema.stages.verify import verify_corrections

if TYPE_CHECKING:
    from lema.dataset.base import DatasetSink

BackendFactory = Callable[[str, LLMSettings], LLMBackend]


def default_backend_factory(name: str, settings: LLMSettings) -> LLMBackend:
    from lema.llm.factory import create_backend

    return create_backend(settings)


class Resources:
    """LLM backends (one per configured name, made on first use) and the checker, shared by a process's workers."""

    def __init__(self, settings: LemaSettings, backend_factory: BackendFactory = default_backend_factory) -> None:
        self.settings = settings
        self._backend_factory = backend_factory
        self._backends: dict[str, LLMBackend] = {}
        self._checker: Checker | None = None
        self._making = threading.Lock()
        self._evolver_state: EvolverState | None = None
        self._dataset_sink: DatasetSink | None = None

    def llm(self, name: str) -> LLMBackend:
        with self._making:  # batches processed side by side must not each build the same model
            if name not in self._backends:
                self._backends[name] = self._backend_factory(name, self.settings.llms[name])
            return self._backends[name]

    @property
    def checker(self) -> Checker:
        if self._checker is None:
            self._checker = Checker(self.settings.checker)
        return self._checker

    @property
    def evolver_state(self) -> EvolverState:
        if self._evolver_state is None:
            threshold = self.settings.evolve.near_duplicate_threshold
            self._evolver_state = create_evolver_state(self.settings.bus, threshold, f"lema-evolver-{os.getpid()}")
        return self._evolver_state

    @property
    def dataset_sink(self) -> DatasetSink:
        """The run's dataset table, opened (or created) on first use."""
        if self._dataset_sink is None:
            from lema.dataset import create_sink

            self._dataset_sink = create_sink(self.settings, writer=f"{socket.gethostname()}-{os.getpid()}")
        return self._dataset_sink

    @property
    def backends(self) -> Mapping[str, LLMBackend]:
        return dict(self._backends)

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        if self._checker is not None:
            self._checker.close()
            self._checker = None
        if self._evolver_state is not None:
            self._evolver_state.close()
            self._evolver_state = None


class Worker(Protocol):
    name: str
    inputs: Mapping[str, type[Record]]

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]: ...


def _messages(topic: str, records: Sequence[Question | Attempt | CorrectedAttempt | Drop]) -> list[Message]:
    return [Message(topic, r.key, r) for r in records]


RecordT = TypeVar("RecordT", bound=Record)


def _typed(records: Sequence[Record], kind: type[RecordT]) -> list[RecordT]:
    return [r for r in records if isinstance(r, kind)]


class SamplerWorker:
    name = "sampler"
    inputs: Mapping[str, type[Record]] = {Topics.QUESTIONS: Question}

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.settings, self.resources = settings, resources

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        questions = _typed(records, Question)
        attempts: list[Attempt] = []
        for model in self.settings.sample.models:
            backend = self.resources.llm(model)
            attempts += sample_questions(questions, backend, self.settings.sample, self.settings.run.prompts_dir)
        return _messages(Topics.PATHS, attempts)


class CheckerWorker:
    """Checks sampled paths (right -> cot, wrong -> mistakes) and verifies corrections."""

    name = "checker"
    inputs: Mapping[str, type[Record]] = {Topics.PATHS: Attempt, Topics.CORRECTIONS: CorrectedAttempt}

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.resources = resources
        self.show_gold = settings.correct.show_gold

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        if topic == Topics.PATHS:
            checked = check_attempts(_typed(records, Attempt), self.resources.checker)
            return [Message(Topics.COT if a.path.verdict == "correct" else Topics.MISTAKES, a.key, a) for a in checked]
        verified, drops = verify_corrections(
            _typed(records, CorrectedAttempt), self.resources.checker, show_gold=self.show_gold
        )
        return _messages(Topics.VERIFIED, verified) + _messages(Topics.DROPS, drops)


class CorrectorWorker:
    name = "corrector"
    inputs: Mapping[str, type[Record]] = {Topics.MISTAKES: Attempt}

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.settings, self.resources = settings, resources

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        backend = self.resources.llm(self.settings.correct.model)
        corrected, drops = correct_attempts(
            _typed(records, Attempt), backend, self.settings.correct, self.settings.run.prompts_dir
        )
        return _messages(Topics.CORRECTIONS, corrected) + _messages(Topics.DROPS, drops)


class EvolverWorker:
    """Remembers every question it sees; evolves each question with a verified correction once, for bounded rounds.

    What it remembers and which seeds are evolved live in the `EvolverState` (shared by every replica on a Kafka
    bus): a seed is evolved by the delivery of the correction that claimed it first, and a redelivery of that
    correction republishes the recorded outputs rather than evolving again.
    """

    name = "evolver"
    inputs: Mapping[str, type[Record]] = {Topics.QUESTIONS: Question, Topics.VERIFIED: CorrectedAttempt}

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.settings, self.resources = settings, resources

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        state = self.resources.evolver_state
        if topic == Topics.QUESTIONS:
            state.remember(_typed(records, Question))
            return []
        settings = self.settings.evolve
        seeds_by_id: dict[str, Question] = {}
        corrections: dict[str, list[str]] = {}  # seed id -> ids of this batch's corrections of it, in order
        for item in _typed(records, CorrectedAttempt):
            question = item.question
            if settings.enabled and question.round < settings.rounds:
                seeds_by_id.setdefault(question.id, question)
                corrections.setdefault(question.id, []).append(item.correction.id)
        if not seeds_by_id:
            return []
        owners = state.claim({seed_id: ids[0] for seed_id, ids in corrections.items()})
        mine = {seed_id: owner for seed_id, owner in owners.items() if owner.claimant in corrections[seed_id]}
        done = [owner for owner in mine.values() if owner.done]  # redelivered: publish what was recorded
        seeds = [seeds_by_id[seed_id] for seed_id, owner in mine.items() if not owner.done]
        if seeds:
            state.remember(seeds)
            voters = [self.resources.llm(m) for m in (settings.answer_models or self.settings.sample.models)]
            outputs = evolve_by_seed(
                seeds, self.resources.llm(settings.model), voters, state.index, settings, self.settings.run.prompts_dir
            )
            evolved = [
                mine[seed_id].model_copy(update={"done": True, "questions": tuple(qs), "drops": tuple(ds)})
                for seed_id, (qs, ds) in outputs.items()
            ]
            state.record(evolved)  # before publishing: a crash from here on republishes these outputs
            done += evolved
        questions = [q for evolution in done for q in evolution.questions]
        drops = [d for evolution in done for d in evolution.drops]
        return _messages(Topics.QUESTIONS, questions) + _messages(Topics.DROPS, drops)


class DatasetWriterWorker:
    """The sink: turns the records that reach the end of the pipeline into dataset rows; `commit` appends them.

    The embedded runtime commits after every batch; the Kafka runtime commits once per consumed batch, with the
    batch's offsets, so rows and offsets land in the table together.
    """

    name = "dataset-writer"
    inputs: Mapping[str, type[Record]] = {
        Topics.QUESTIONS: Question,
        Topics.COT: Attempt,
        Topics.MISTAKES: Attempt,
        Topics.VERIFIED: CorrectedAttempt,
        Topics.DROPS: Drop,
    }

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.settings, self.resources = settings, resources
        self.pending: list[TableRow] = []

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        self.pending += table_rows(topic, records, self.settings.dataset)
        return []

    def commit(self, offsets: Mapping[str, int] | None = None) -> bool:
        """Append the pending rows (and `offsets`: source id -> next offset) in one commit; False if the table
        already held those offsets."""
        rows, self.pending = self.pending, []
        return self.resources.dataset_sink.append(rows, offsets)


WORKERS: dict[str, Callable[[LemaSettings, Resources], Worker]] = {
    "sampler": SamplerWorker,
    "checker": CheckerWorker,
    "corrector": CorrectorWorker,
    "evolver": EvolverWorker,
    "dataset-writer": DatasetWriterWorker,
}
"""Every worker, in topic-flow order."""

STAGE_OF: dict[tuple[str, str], str] = {
    ("sampler", Topics.QUESTIONS): "sample",
    ("checker", Topics.PATHS): "check",
    ("corrector", Topics.MISTAKES): "correct",
    ("checker", Topics.CORRECTIONS): "verify",
    ("evolver", Topics.VERIFIED): "evolve",
}
"""The LEMA stage each (worker, input topic) runs, for progress bars, timings and metrics."""


def batches_in_flight(worker: str, settings: LemaSettings, batch_size: int) -> int:
    """How many input batches of `batch_size` messages a runtime should have in process at once for `worker`.

    A stage waits for its whole batch, so with one batch at a time the batch's tail leaves a batching LLM server
    with fewer than `max_concurrency` requests in flight. The window holds the batch being finished plus twice
    `max_concurrency` requests: a server answers a whole batch of requests at once, and the window's next
    `max_concurrency` requests, already waiting for a slot, take the freed slots together (requests from a batch
    started only then arrive late and miss the server's next batch). Results are published per batch, so nothing
    else changes. The evolver keeps per-process state, the other workers call no LLM, and a replayed LLM answers
    from memory (batches side by side would only contend for the GIL): one batch at a time.
    """
    if worker == "sampler":
        models, requests = settings.sample.models, batch_size * settings.sample.samples_per_model
    elif worker == "corrector":
        models, requests = (settings.correct.model,), batch_size
    else:
        return 1
    waiting = [settings.llms[model] for model in models if settings.llms[model].backend != "replay"]
    if not waiting:
        return 1
    window = max(llm.max_concurrency for llm in waiting)
    return 1 + math.ceil(2 * window / requests)


def process_windowed(
    worker: Worker, topic: str, batches: Iterable[Sequence[Record]], depth: int
) -> Iterator[tuple[int, list[Message]]]:
    """(input count, output messages) for each batch in order, with up to `depth` batches in process at once.

    The next batch is taken from `batches` only when a place in the window is free, so a runtime that polls lazily
    holds no more than `depth` batches.
    """
    in_flight: deque[tuple[int, Future[list[Message]]]] = deque()
    pool = ThreadPoolExecutor(depth, thread_name_prefix=worker.name)
    finished = False
    try:
        for batch in batches:
            in_flight.append((len(batch), pool.submit(worker.process, topic, batch)))
            if len(in_flight) == depth:
                count, outputs = in_flight.popleft()
                yield count, _wait(outputs)
        while in_flight:
            count, outputs = in_flight.popleft()
            yield count, _wait(outputs)
        finished = True
    finally:
        # Interrupted (Ctrl-C, a failed batch): batches not started are dropped, and nothing waits for the others;
        # closing the backends makes their calls fail, and their results were never published.
        pool.shutdown(wait=finished, cancel_futures=True)


def _wait(future: Future[list[Message]]) -> list[Message]:
    """The future's result, waited for in short timed waits: a signal (Ctrl-C) that the kernel hands to another
    thread runs its Python handler only once the main thread executes again, which an untimed wait never does."""
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            continue


def build_worker(name: str, settings: LemaSettings, resources: Resources) -> Worker:
    try:
        return WORKERS[name](settings, resources)
    except KeyError:
        raise ValueError(f"unknown worker {name!r}; choose from {sorted(WORKERS)}") from None
