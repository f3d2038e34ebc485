"""`lema serve <service>`: one service process — gRPC server, `/metrics` endpoint and, on a Kafka bus, its worker.

Lifecycle, top to bottom: load what the service computes with (its LLMs, the checker) so that SERVING means ready →
freeze what start-up made out of the garbage collector's reach → `/metrics` → gRPC SERVING → consume its topics
(bus.kind 'kafka') → on SIGTERM or SIGINT: health NOT_SERVING and in-flight calls drained, while the worker finishes
and commits its batch → resources closed. While the broker, the store or an LLM is unavailable, health is NOT_SERVING
and the worker waits for it (`lema.runtime.failures`); the process stays up.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading

from lema.bus.base import Topics
from lema.bus.kafka import ensure_topics
from lema.pipeline import DatasetWriterWorker, Resources, Worker, batches_in_flight, build_worker
from lema.runtime import metrics
from lema.runtime.dataset_writer import TableOffsets, save_run_config
from lema.runtime.failures import BROKER, LLM, STORE, Dependencies, Interrupted, retry_transient
from lema.runtime.grpc_server import GrpcServer
from lema.runtime.kafka_worker import KafkaWorker
from lema.runtime.services import service_bindings
from lema.runtime.settings import Service, ServiceSettings
from lema.store import create_store

log = logging.getLogger(__name__)


def llms_of(service: Service, settings: ServiceSettings) -> list[str]:
    """The configured LLM names a service generates with."""
    if service == "sampler":
        return list(settings.sample.models)
    if service == "corrector":
        return [settings.correct.model]
    if service == "evolver":
        return list(dict.fromkeys([settings.evolve.model, *(settings.evolve.answer_models or settings.sample.models)]))
    return []


def freeze_startup_objects() -> None:
    """Move every object alive now (libraries, models, the checker's tables) out of the garbage collector's reach.

    They live as long as the process, yet each full collection walks all of them: hundreds of thousands of objects,
    tens of milliseconds, several times a second under a Kafka stage's allocation rate (measured: 20-34 us of a
    check message's ~130). Frozen, a full collection walks only what was made since start-up."""
    gc.collect()
    gc.freeze()


class ServiceProcess:
    def __init__(self, service: Service, settings: ServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.stop = threading.Event()
        """Set it (the CLI does on SIGTERM/SIGINT) to shut the service down gracefully."""
        self.resources = Resources(settings)
        self.dependencies = Dependencies(service)

    def run(self) -> None:
        """Serve until `stop` is set; returns after a graceful shutdown."""
        self._load_resources()
        freeze_startup_objects()
        self._serve_metrics()
        server = GrpcServer(self.settings.server, service_bindings(self.service, self.settings, self.resources))
        server.start()
        self.dependencies.on_change(server.set_serving)
        for dependency in self._dependency_names():
            self.dependencies.up(dependency)  # the gauge starts at 1 rather than absent
        shutdown = threading.Thread(target=self._stop_server_on_signal, args=(server,), name="grpc-shutdown")
        shutdown.start()
        try:
            if self.settings.bus.kind == "kafka":
                try:
                    self._consume()
                except Interrupted as exc:
                    log.info("%s: %s", self.service, exc)
            else:
                # Wake up now and then: a signal caught by another thread runs its handler only when the main
                # thread next executes Python code, and an untimed wait would never return to it.
                while not self.stop.wait(timeout=0.2):
                    pass
        finally:
            self.stop.set()
            shutdown.join()
            self.resources.close()
        log.info("%s: stopped", self.service)

    def _dependency_names(self) -> list[str]:
        names = [BROKER] if self.settings.bus.kind == "kafka" else []
        names += [STORE] if self.service == "dataset-writer" else []
        return names + ([LLM] if llms_of(self.service, self.settings) else [])

    def _load_resources(self) -> None:
        for name in llms_of(self.service, self.settings):
            self.resources.llm(name)
        if self.service == "checker":
            _ = self.resources.checker
        if self.service == "dataset-writer":
            _ = self.resources.dataset_sink  # read to the last checkpoint (bounded) before health says SERVING

    def _serve_metrics(self) -> None:
        server = self.settings.server
        port = metrics.serve_metrics(server.host, server.metrics_port, lambda: self.resources.backends)
        log.info("%s: /metrics on port %d", self.service, port)

    def _stop_server_on_signal(self, server: GrpcServer) -> None:
        self.stop.wait()
        server.stop()

    def _consume(self) -> None:
        """Set up (waiting for the broker and store if they are not up yet), then consume until stopped."""
        bus, topics = self.settings.bus, self.settings.topics
        retry_transient(
            lambda: ensure_topics(bus, Topics.ALL, topics.partitions, topics.replication_factor),
            self.dependencies,
            self.stop,
        )
        worker: Worker = build_worker(self.service, self.settings, self.resources)
        client_id = f"{bus.group_prefix}{self.service}-{socket.gethostname()}-{os.getpid()}"
        on_batch = on_assign = None
        if isinstance(worker, DatasetWriterWorker):
            retry_transient(
                lambda: save_run_config(create_store(self.settings.store), self.settings), self.dependencies, self.stop
            )
            table = TableOffsets(worker, bus.group_prefix + worker.name)
            on_batch, on_assign = table.commit, table.positions
            # Larger batches than the model services: each one is a table commit, whose cost is mostly fixed.
            bus = bus.model_copy(update={"batch_size": self.settings.dataset.writer_batch_size})
        kafka = retry_transient(
            lambda: KafkaWorker(
                worker,
                bus,
                client_id=client_id,
                on_batch=on_batch,
                on_assign=on_assign,
                dependencies=self.dependencies,
                batches_in_flight=batches_in_flight(worker.name, self.settings, bus.batch_size),
            ),
            self.dependencies,
            self.stop,
        )
        kafka.run(self.stop)
