"""The embedded runtime: the whole LEMA loop in one process, over an in-process bus and a local artifact store.

Lifecycle: setup (validate input before any LLM call, open the store, wrap each LLM in a completion journal) ->
run (drive the workers over the in-memory bus until every topic is drained; the dataset writer appends each batch to
the run's table) -> export the dataset files and summary from the table -> cleanup. Stopped at any point (Ctrl-C,
SIGKILL), the same command resumes: every finished LLM call is answered from the journal, and deterministic ids
(deduplicated when the table is read) make the final dataset identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lema.bus.base import Message, Topics
from lema.bus.memory import MemoryBus
from lema.config import ConfigError, LemaSettings, LLMSettings
from lema.dataset import reader
from lema.inputs import load_questions
from lema.llm.base import LLMBackend
from lema.llm.factory import check_reachable
from lema.llm.journal import JournaledBackend
from lema.pipeline import (
    STAGE_OF,
    WORKERS,
    BackendFactory,
    DatasetWriterWorker,
    Resources,
    Worker,
    batches_in_flight,
    default_backend_factory,
    process_windowed,
)
from lema.prompts import TEMPLATES_DIR
from lema.records import Question, Record
from lema.store import create_store

ProgressHook = Callable[[str, int, int], None]
"""Called as (stage, records just processed, records still pending for that stage)."""


@dataclass
class RunResult:
    summary: dict[str, Any]
    keys: list[str]
    store_uri: str


@dataclass
class _Clock:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def journaled(factory: BackendFactory, journal_dir: Path) -> BackendFactory:
    """Wrap every backend the factory makes in a journal, one file per configured LLM name."""

    def make(name: str, settings: LLMSettings) -> LLMBackend:
        return JournaledBackend(factory(name, settings), journal_dir / f"{name}.jsonl")

    return make


class EmbeddedPipeline:
    def __init__(
        self,
        settings: LemaSettings,
        backend_factory: BackendFactory = default_backend_factory,
        progress: ProgressHook | None = None,
        overwrite: bool = False,
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.overwrite = overwrite
        self._prepared = False
        self.journal_dir = settings.run.work_dir / settings.run.name / "journal"
        self.resources = Resources(settings, journaled(backend_factory, self.journal_dir))
        self.store = create_store(settings.store)
        self.clock = _Clock()
        self.processed: Counter[str] = Counter()

    # -- setup -------------------------------------------------------------------------------------------------
    def load_questions(self) -> list[Question]:
        """Read and validate every input question first: bad input fails before a single LLM call."""
        source = self.settings.input
        return load_questions(source.path, source.format, source.task, source.limit)

    def prepare(self, questions: list[Question]) -> None:
        """Everything that can fail before the first LLM call: the run name's claim, then each LLM (an unknown
        model or an unreachable server fails here, in one line, rather than under the progress bars)."""
        if self._prepared:
            return
        self._claim_run_name(questions)
        for name in self._llm_names():
            check_reachable(self.settings.llms[name])
            self.resources.llm(name)
        self._prepared = True

    def _llm_names(self) -> list[str]:
        evolve = self.settings.evolve
        names = [*self.settings.sample.models, self.settings.correct.model]
        if evolve.enabled and evolve.rounds > 0:
            names += [evolve.model, *evolve.answer_models]
        return list(dict.fromkeys(names))

    def _claim_run_name(self, questions: list[Question]) -> None:
        """A run name holds one input's dataset. The same input resumes; another input is refused unless
        `overwrite`, which first deletes what the name held, so no file of the old run survives next to the new."""
        prefix = self.settings.run.name
        claim = {
            "input": self.settings.input.path,
            "questions": len(questions),
            "fingerprint": hashlib.sha256("\n".join(q.id for q in questions).encode()).hexdigest(),
        }
        key = f"{prefix}/input.json"
        held = self.store.list(f"{prefix}/")
        if held and not self.overwrite:
            previous = json.loads(self.store.get_bytes(key)) if key in held else {}
            if previous.get("fingerprint") != claim["fingerprint"]:
                was = f"{previous['input']}, {previous['questions']} questions" if previous else "an unknown input"
                raise ConfigError(
                    f"run.name {prefix!r}: {self.store.uri(prefix)} already holds a run of {was}, not of "
                    f"{claim['input']} ({claim['questions']} questions); choose another run.name, or pass "
                    "--overwrite to replace it"
                )
        if self.overwrite:
            for stale in held:
                self.store.delete(stale)
        self.store.put_bytes(key, json.dumps(claim).encode())

    def _save_run_config(self) -> None:
        """The resolved settings and the prompts in force go to the store beside the dataset they produced."""
        prefix = self.settings.run.name
        config = self.settings.model_dump(mode="json")
        self.store.put_bytes(f"{prefix}/config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        prompts = self.settings.run.prompts_dir or TEMPLATES_DIR
        for template in sorted(Path(prompts).glob("*.yaml")):
            self.store.put_bytes(f"{prefix}/prompts/{template.name}", template.read_bytes())

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self, questions: list[Question] | None = None) -> RunResult:
        questions = self.load_questions() if questions is None else questions
        self.prepare(questions)
        self._save_run_config()
        start = time.perf_counter()
        workers = [make(self.settings, self.resources) for make in WORKERS.values()]
        bus = MemoryBus()
        bus.publish([Message(Topics.QUESTIONS, q.key, q) for q in questions])
        busy = True
        while busy:  # each pass drains every worker's inputs in flow order; evolved questions start another pass
            busy = False
            for worker in workers:
                for topic in worker.inputs:
                    busy = self._drain(bus, worker, topic) or busy
        run = self.settings.run.name
        with self.clock.time("dataset"):
            runtime = self._runtime_summary(time.perf_counter() - start)
            sink = self.resources.dataset_sink
            keys = reader.export(sink, run, self.store, run, self.settings.dataset, runtime=runtime)
        summary = json.loads(self.store.get_bytes(f"{run}/run_summary.json"))
        return RunResult(summary=summary, keys=keys, store_uri=self.store.uri(run))

    def _drain(self, bus: MemoryBus, worker: Worker, topic: str) -> bool:
        """Process every pending message of `topic`, `batches_in_flight` batches at a time, publishing each batch's
        results in order; True if there was anything to process."""
        if not bus.pending(worker.name, topic):
            return False
        stage = STAGE_OF.get((worker.name, topic), "dataset")
        size = self._batch_size(worker.name)
        polled = done = 0

        def batches() -> Iterator[list[Record]]:
            nonlocal polled
            while batch := bus.poll(worker.name, topic, size):
                polled += len(batch)
                yield [m.record for m in batch]

        with self.clock.time(stage):
            depth = batches_in_flight(worker.name, self.settings, size)
            for count, outputs in process_windowed(worker, topic, batches(), depth):
                bus.publish(outputs)
                if isinstance(worker, DatasetWriterWorker):
                    worker.commit()
                done += count
                self.processed[stage] += count
                if self.progress:
                    self.progress(stage, count, bus.pending(worker.name, topic) + polled - done)
        return True

    def _batch_size(self, worker: str) -> int:
        sizes = {
            "sampler": self.settings.sample.batch_size,
            "corrector": self.settings.correct.batch_size,
            "evolver": self.settings.evolve.batch_size,
        }
        return sizes.get(worker, 256)

    def _runtime_summary(self, seconds: float) -> dict[str, Any]:
        llms: dict[str, Any] = {}
        for name, backend in self.resources.backends.items():
            usage = backend.usage
            llms[name] = {
                "model": backend.model,
                "requests": usage.requests,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "generate_seconds": round(usage.busy_seconds, 3),  # wall time, however many requests overlap
                "journal_hits": backend.hits if isinstance(backend, JournaledBackend) else 0,
            }
        return {
            "run": self.settings.run.name,
            "llms": llms,
            "processed": dict(self.processed),
            "timings_s": {
                **{k: round(v, 3) for k, v in self.clock.seconds.items()},
                "total": round(seconds, 3),
            },
        }

    # -- cleanup -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.resources.close()

    def __enter__(self) -> EmbeddedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
