"""The platform's commands: `lema serve <service>`, `lema up` and `lema submit`.

Registered in `lema.cli`; everything heavy (grpc, kafka, torch) is imported inside the commands.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    from lema.runtime.settings import Service, ServiceSettings

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a setting: --set server.grpc_port=7052.")
]
log = logging.getLogger("lema")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)  # "task ran for 0.11s" chatter


def _load(config: Path | None, overrides: list[str] | None) -> ServiceSettings:
    from lema.config import ConfigError, load_settings
    from lema.runtime.settings import ServiceSettings

    try:
        return load_settings(config, overrides or [], ServiceSettings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def serve_command(
    service: Annotated[str, typer.Argument(help="sampler | checker | corrector | evolver | dataset-writer")],
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Run one service: gRPC (with health) on server.grpc_port, /metrics on server.metrics_port, and its Kafka
    worker when bus.kind is 'kafka'. SIGTERM shuts it down gracefully."""
    from lema.runtime.serve import ServiceProcess
    from lema.runtime.settings import SERVICES

    if service not in SERVICES:
        typer.echo(f"error: unknown service {service!r}; choose from {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    settings = _load(config, overrides)
    _configure_logging()
    process = ServiceProcess(cast("Service", service), settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: process.stop.set())
    process.run()


UP_GRPC_PORT = 7051
"""`lema up`'s first gRPC port: below Linux's ephemeral range (32768-60999), so an outgoing connection never holds
it when a service restarts."""
RESTART_BACKOFF_S = (1.0, 30.0)
"""A crashed child is restarted after 1 s, doubling per crash in a row up to 30 s; a minute of uptime resets it."""


def up_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    embedded_infra: Annotated[
        bool, typer.Option("--embedded-infra", help="Also start a local Kafka broker and S3 server (laptop use).")
    ] = False,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (host:port).")] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="MinIO/S3 endpoint (host:port).")] = None,
    host: Annotated[
        str, typer.Option(help="Interface the services' gRPC and /metrics listen on (0.0.0.0 exposes them).")
    ] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option(help="First gRPC port; services get consecutive ports.")] = UP_GRPC_PORT,
    metrics_port: Annotated[int, typer.Option(help="First /metrics port; services get consecutive ports.")] = 9400,
    kafka_port: Annotated[int, typer.Option(help="Port of the --embedded-infra broker.")] = 9092,
    s3_port: Annotated[int, typer.Option(help="Port of the --embedded-infra S3 server.")] = 9000,
) -> None:
    """Start every service as a separate local process against Kafka and MinIO, restarting any that crashes;
    Ctrl-C stops them all."""
    from lema.runtime.infra import LocalBroker, LocalS3
    from lema.runtime.settings import SERVICES

    _configure_logging()
    _load(config, overrides)  # fail here, once, rather than in five children
    env = dict(os.environ)
    infra: list[LocalBroker | LocalS3] = []
    wiring = ["bus.kind=kafka"]
    try:
        if embedded_infra:
            broker, s3 = LocalBroker(port=kafka_port), LocalS3(port=s3_port)
            infra += [broker, s3]
            bootstrap_servers, s3_endpoint = bootstrap_servers or broker.bootstrap_servers, s3_endpoint or s3.endpoint
            env.setdefault("LEMA_S3_ACCESS_KEY", s3.access_key)
            env.setdefault("LEMA_S3_SECRET_KEY", s3.secret_key)
            log.info("local Kafka broker on %s, S3 server on %s", broker.bootstrap_servers, s3.endpoint)
        if bootstrap_servers:
            wiring.append(f"bus.bootstrap_servers={bootstrap_servers}")
        if s3_endpoint:
            wiring += ["store.kind=minio", f"store.endpoint={s3_endpoint}"]
        children = []
        for index, service in enumerate(SERVICES):
            command = [sys.executable, "-m", "lema.cli", "serve", service]
            command += ["--config", str(config)] if config else []
            ports = [f"server.grpc_port={grpc_port + index}", f"server.metrics_port={metrics_port + index}"]
            for setting in [*wiring, f"server.host={host}", *ports, *(overrides or [])]:
                command += ["--set", setting]
            children.append(SupervisedChild(service, command, env).start())
            log.info("%s: gRPC %s:%d, metrics %s:%d", service, host, grpc_port + index, host, metrics_port + index)
        submit = " ".join(["lema submit QUESTIONS.jsonl", *(["--config", str(config)] if config else [])])
        submit += "".join(f" --set {setting}" for setting in [*wiring, *(overrides or [])])
        credentials = " and ".join(("LEMA_S3_ACCESS_KEY", "LEMA_S3_SECRET_KEY"))
        log.info("all services started; feed them with (%s set as for the services):\n  %s", credentials, submit)
        _supervise(children)
    finally:
        for part in infra:
            part.stop()


class SupervisedChild:
    """One `lema serve` child of `lema up`: restarted with backoff whenever it exits on its own."""

    def __init__(self, service: str, command: list[str], env: dict[str, str]) -> None:
        self.service, self.command, self.env = service, command, env
        self.process: subprocess.Popen[bytes] | None = None
        self.crashes_in_a_row = 0
        self.started_at = 0.0
        self.restart_at: float | None = None

    def start(self) -> SupervisedChild:
        self.process = subprocess.Popen(self.command, env=self.env)
        self.started_at, self.restart_at = time.monotonic(), None
        log.info("%s: pid %d", self.service, self.process.pid)
        return self

    def check(self) -> None:
        """Notice an exit (schedule a restart with backoff) or a due restart (start it)."""
        assert self.process is not None
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        if now - self.started_at >= 60:
            self.crashes_in_a_row = 0
        first, cap = RESTART_BACKOFF_S
        delay = min(cap, first * 2**self.crashes_in_a_row)
        self.crashes_in_a_row += 1
        self.restart_at = now + delay
        log.error("%s: exited with code %s; restarting in %.0f s", self.service, code, delay)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None and self.restart_at is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.process is not None:
            self.process.wait()


def _supervise(children: list[SupervisedChild]) -> None:
    """Until Ctrl-C/SIGTERM, restart any child that exits; then stop every child gracefully (SIGTERM, then wait)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        for child in children:
            child.check()
    for child in children:
        child.terminate()
    for child in children:
        child.wait()


def submit_command(
    questions: Annotated[Path, typer.Argument(help="Question file (JSONL; format as in input.format).")],
    config: ConfigOption = None,
    overrides: SetOption = None,
    follow: Annotated[bool, typer.Option(help="Print progress until the flow has settled.")] = True,
    timeout_s: Annotated[float, typer.Option(help="Give up following after this many seconds.")] = 3600.0,
) -> None:
    """Publish a question file to the running platform's `questions` topic and follow the run to its dataset.

    Exit code: 0 settled and clean; 1 not settled within --timeout-s; 3 settled, but messages were dead-lettered
    meanwhile (`lema dlq list`); 4 settled, but the dataset does not count what the topics hold."""
    from lema.bus.base import Message, Topics
    from lema.bus.kafka import ensure_topics, kafka_bus
    from lema.inputs import InputError, load_questions
    from lema.runtime.progress import FlowReport, FlowTracker
    from lema.store import create_store

    settings = _load(config, overrides)
    try:
        loaded = load_questions(str(questions), settings.input.format, settings.input.task, settings.input.limit)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    bus_settings = settings.bus
    ensure_topics(bus_settings, Topics.ALL, settings.topics.partitions, settings.topics.replication_factor)
    store = create_store(settings.store)
    tracker = FlowTracker(bus_settings, settings.store, settings.run.name) if follow else None
    bus = kafka_bus(bus_settings, client_id="lema-submit")
    try:
        bus.publish([Message(Topics.QUESTIONS, q.key, q) for q in loaded])
    finally:
        bus.close()
    typer.echo(f"submitted {len(loaded)} questions to {bus_settings.topic_prefix}{Topics.QUESTIONS}")
    if tracker is None:
        return
    last_report = 0.0

    def progress(report: FlowReport) -> None:
        nonlocal last_report
        if time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            typer.echo("  " + "  ".join(f"{topic}={n}" for topic, n in report.on_topic.items()))

    try:
        report = tracker.wait(timeout_s, progress)
    except TimeoutError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        tracker.close()
    typer.echo("\n".join(report.lines()))
    typer.echo(f"done: {report.in_dataset}; dataset table at {store.uri(settings.run.name)}/table")
    typer.echo(f"files: lema dataset export {settings.run.name} (with the same --config/--set)")
    if report.new_dead_letters:
        typer.echo(
            f"warning: {report.new_dead_letters} message(s) were dead-lettered during this run; see `lema dlq list`",
            err=True,
        )
        raise typer.Exit(3)
    if report.differences:
        typer.echo("warning: the dataset does not count what the topics hold (see the lines marked !)", err=True)
        raise typer.Exit(4)
