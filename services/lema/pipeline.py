"""The topic flow: each worker consumes records from topics, calls a stage, and returns messages to publish.

    questions -> sampler -> paths -> checker -> cot (right) / mistakes (wrong) -> corrector -> corrections
    corrections -> checker (verify) -> corrections.verified -> dataset-writer, evolver -> questions (next round)

Workers are pure apart from their LLM and checker calls: the embedded runtime drives them over an in-process bus,
the Kafka runtime over consumer groups, with the same code.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from lema.bus.base import Message, Topics
from lema.checker import Checker
from lema.config import LemaSettings, LLMSettings
from lema.llm.base import LLMBackend
from lema.records import Attempt, CorrectedAttempt, Drop, Question, Record
from lema.stages.check import check_attempts
from lema.stages.correct import correct_attempts
from lema.stages.dataset import TableRow, table_rows
from lema.stages.evolve import QuestionIndex, evolve_questions
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
        self._dataset_sink: DatasetSink | None = None

    def llm(self, name: str) -> LLMBackend:
        if name not in self._backends:
            self._backends[name] = self._backend_factory(name, self.settings.llms[name])
        return self._backends[name]

    @property
    def checker(self) -> Checker:
        if self._checker is None:
            self._checker = Checker(self.settings.checker)
        return self._checker

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


def build_worker(name: str, settings: LemaSettings, resources: Resources) -> Worker:
    try:
        return WORKERS[name](settings, resources)
    except KeyError:
        raise ValueError(f"unknown worker {name!r}; choose from {sorted(WORKERS)}") from None
