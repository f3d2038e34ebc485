"""The topic flow: each worker consumes records from topics, calls a stage, and returns messages to publish.

    questions -> sampler -> paths -> checker -> cot (right) / mistakes (wrong) -> corrector -> corrections
    corrections -> checker (verify) -> corrections.verified -> dataset-writer, evolver -> questions (next round)

Workers are pure apart from their LLM and checker calls: the embedded runtime drives them over an in-process bus,
the Kafka runtime over consumer groups, with the same code.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

from lema.bus.base import Message, Topics
from lema.checker import Checker
from lema.config import LemaSettings, LLMSettings
from lema.llm.base import LLMBackend
from lema.records import Attempt, CorrectedAttempt, Drop, Question, Record
from lema.stages.check import check_attempts
from lema.stages.correct import correct_attempts
from lema.stages.dataset import DatasetBuilder
from lema.stages.evolve import QuestionIndex, evolve_questions
from lema.stages.sample import sample_questions
from lema.stages.verify import verify_corrections

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
    def backends(self) -> Mapping[str, LLMBackend]:
        return dict(self._backends)

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        if self._checker is not None:
            self._checker.close()
            self._checker = None


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

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        if topic == Topics.PATHS:
            checked = check_attempts(_typed(records, Attempt), self.resources.checker)
            return [Message(Topics.COT if a.path.verdict == "correct" else Topics.MISTAKES, a.key, a) for a in checked]
        verified, drops = verify_corrections(_typed(records, CorrectedAttempt), self.resources.checker)
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
    """Indexes every question it sees; evolves each question with a verified correction once, for bounded rounds."""

    name = "evolver"
    inputs: Mapping[str, type[Record]] = {Topics.QUESTIONS: Question, Topics.VERIFIED: CorrectedAttempt}

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.settings, self.resources = settings, resources
        self.index = QuestionIndex(settings.evolve.near_duplicate_threshold)
        self.evolved: set[str] = set()

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        if topic == Topics.QUESTIONS:
            for question in _typed(records, Question):
                self.index.add(question)
            return []
        settings = self.settings.evolve
        seeds: dict[str, Question] = {}
        for item in _typed(records, CorrectedAttempt):
            question = item.question
            if settings.enabled and question.round < settings.rounds and question.id not in self.evolved:
                seeds.setdefault(question.id, question)
        if not seeds:
            return []
        for question in seeds.values():
            self.index.add(question)
        voters = [self.resources.llm(m) for m in (settings.answer_models or self.settings.sample.models)]
        questions, drops = evolve_questions(
            list(seeds.values()),
            self.resources.llm(settings.model),
            voters,
            self.index,
            settings,
            self.settings.run.prompts_dir,
        )
        self.evolved.update(seeds)  # only after success: a failed batch is retried with the same seeds
        return _messages(Topics.QUESTIONS, questions) + _messages(Topics.DROPS, drops)


class DatasetWriterWorker:
    """The sink: accumulates the records the dataset and the summary are made of."""

    name = "dataset-writer"
    inputs: Mapping[str, type[Record]] = {
        Topics.QUESTIONS: Question,
        Topics.COT: Attempt,
        Topics.MISTAKES: Attempt,
        Topics.VERIFIED: CorrectedAttempt,
        Topics.DROPS: Drop,
    }

    def __init__(self, settings: LemaSettings, resources: Resources) -> None:
        self.builder = DatasetBuilder(settings.dataset)

    def process(self, topic: str, records: Sequence[Record]) -> list[Message]:
        for record in records:
            self.builder.add(topic, record)
        return []


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


def batches_in_flight(worker: str, settings: LemaSettings) -> int:
    """How many input batches a runtime should have in process at once for `worker`.

    A stage waits for its whole batch, so with one batch at a time the batch's tail leaves a batching LLM server
    with fewer than `max_concurrency` requests in flight. Enough further batches to fill that window keep it full;
    results are published per batch, so nothing else changes. The evolver keeps per-process state and the other
    workers call no LLM: one batch at a time.
    """
    if worker == "sampler":
        models, requests = settings.sample.models, settings.sample.batch_size * settings.sample.samples_per_model
    elif worker == "corrector":
        models, requests = (settings.correct.model,), settings.correct.batch_size
    else:
        return 1
    window = max(settings.llms[model].max_concurrency for model in models)
    return 1 + math.ceil(window / requests)


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
