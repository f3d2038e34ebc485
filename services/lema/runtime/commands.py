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
    list[str] | None, typer.Option("--set", "-s", help="Override a setting: --set server.grpc_port=50052.")
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


def up_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    embedded_infra: Annotated[
        bool, typer.Option("--embedded-infra", help="Also start a local Kafka broker and S3 server (laptop use).")
    ] = False,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (host:port).")] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="MinIO/S3 endpoint (host:port).")] = None,
    grpc_port: Annotated[int, typer.Option(help="First gRPC port; services get consecutive ports.")] = 50051,
    metrics_port: Annotated[int, typer.Option(help="First /metrics port; services get consecutive ports.")] = 9400,
    kafka_port: Annotated[int, typer.Option(help="Port of the --embedded-infra broker.")] = 9092,
    s3_port: Annotated[int, typer.Option(help="Port of the --embedded-infra S3 server.")] = 9000,
) -> None:
    """Start every service as a separate local process against Kafka and MinIO; Ctrl-C stops them all."""
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
        children = {}
        for index, service in enumerate(SERVICES):
            command = [sys.executable, "-m", "lema.cli", "serve", service]
            command += ["--config", str(config)] if config else []
            ports = [f"server.grpc_port={grpc_port + index}", f"server.metrics_port={metrics_port + index}"]
            for setting in [*wiring, *ports, *(overrides or [])]:
                command += ["--set", setting]
            children[service] = subprocess.Popen(command, env=env)
            log.info(
                "%s: pid %d, gRPC :%d, metrics :%d",
                service,
                children[service].pid,
                grpc_port + index,
                metrics_port + index,
            )
        credentials = [f"{k}={env[k]}" for k in ("LEMA_S3_ACCESS_KEY", "LEMA_S3_SECRET_KEY") if embedded_infra]
        submit = " ".join([*credentials, "lema submit QUESTIONS.jsonl", *(["--config", str(config)] if config else [])])
        submit += "".join(f" --set {setting}" for setting in [*wiring, *(overrides or [])])
        log.info("all services started; feed them with:\n  %s", submit)
        _supervise(children)
    finally:
        for part in infra:
            part.stop()


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Wait for Ctrl-C/SIGTERM or for a child to exit; then stop every child gracefully (SIGTERM, then wait)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        exited = {name: child.returncode for name, child in children.items() if child.poll() is not None}
        if exited:
            log.error("service(s) exited: %s; stopping the rest", exited)
            break
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
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
    from lema.bus.kafka import KafkaBus, ensure_topics
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
    tracker = FlowTracker(bus_settings, store, settings.run.name) if follow else None
    bus = KafkaBus(bus_settings, client_id="lema-submit")
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
    typer.echo(f"done: {report.in_dataset}; dataset at {store.uri(settings.run.name)}/")
    if report.new_dead_letters:
        typer.echo(
            f"warning: {report.new_dead_letters} message(s) were dead-lettered during this run; see `lema dlq list`",
            err=True,
        )
        raise typer.Exit(3)
    if report.differences:
        typer.echo("warning: the dataset does not count what the topics hold (see the lines marked !)", err=True)
        raise typer.Exit(4)
