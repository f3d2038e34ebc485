"""`lema serve <service>`: one service process — gRPC server, `/metrics` endpoint and, on a Kafka bus, its worker.

Lifecycle, top to bottom: load what the service computes with (its LLMs, the checker) so that SERVING means ready →
`/metrics` → gRPC SERVING → consume its topics (bus.kind 'kafka') → on SIGTERM or SIGINT: health NOT_SERVING and
in-flight calls drained, while the worker finishes and commits its batch → resources closed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from lema.bus.base import Topics
from lema.bus.kafka import ensure_topics
from lema.pipeline import DatasetWriterWorker, Resources, Worker, build_worker
from lema.runtime import metrics
from lema.runtime.dataset_writer import TableOffsets, save_run_config
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


class ServiceProcess:
    def __init__(self, service: Service, settings: ServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.stop = threading.Event()
        """Set it (the CLI does on SIGTERM/SIGINT) to shut the service down gracefully."""
        self.resources = Resources(settings)

    def run(self) -> None:
        """Serve until `stop` is set; returns after a graceful shutdown."""
        self._load_resources()
        self._serve_metrics()
        server = GrpcServer(self.settings.server, service_bindings(self.service, self.settings, self.resources))
        server.start()
        shutdown = threading.Thread(target=self._stop_server_on_signal, args=(server,), name="grpc-shutdown")
        shutdown.start()
        try:
            if self.settings.bus.kind == "kafka":
                self._consume()
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
        bus = self.settings.bus
        ensure_topics(bus, Topics.ALL, self.settings.topics.partitions, self.settings.topics.replication_factor)
        worker: Worker = build_worker(self.service, self.settings, self.resources)
        client_id = f"{bus.group_prefix}{self.service}-{socket.gethostname()}-{os.getpid()}"
        if isinstance(worker, DatasetWriterWorker):
            save_run_config(create_store(self.settings.store), self.settings)
            table = TableOffsets(worker, bus.group_prefix + worker.name)
            # Larger batches than the model services: each one is a table commit, whose cost is mostly fixed.
            bus = bus.model_copy(update={"batch_size": self.settings.dataset.writer_batch_size})
            kafka = KafkaWorker(worker, bus, client_id=client_id, on_batch=table.commit, on_assign=table.positions)
        else:
            kafka = KafkaWorker(worker, bus, client_id=client_id)
        kafka.run(self.stop)
