"""Helpers for the platform tests: service processes, gRPC channels, settings for the local broker and S3 server."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from lema.bus.kafka import Delivery
from lema.config import BusSettings
from lema.runtime.infra import LocalBroker, LocalS3, free_port

REPO = Path(__file__).resolve().parents[2]
GSM8K_TEST = REPO / "examples" / "data" / "gsm8k_test.jsonl"
_namespaces = itertools.count()


BUS_CLIENTS = ("librdkafka", "kafka-python")
"""Every Kafka client behind the bus (`bus.client`): the bus-contract tests run on each."""


def kafka_settings(broker: LocalBroker, namespace: str, client: str | None = None) -> dict[str, Any]:
    """Bus settings isolating a test on a shared broker (own topic prefix and groups), with fast group joins;
    `client` defaults to `bus.client`'s default."""
    return {
        "kind": "kafka",
        "client": client or BusSettings().client,
        "bootstrap_servers": broker.bootstrap_servers,
        "topic_prefix": f"{namespace}.",
        "group_prefix": f"{namespace}-",
        "batch_size": 8,
        "max_poll_interval_ms": 6000,
        "session_timeout_ms": 6000,
    }


def bus_settings(broker: LocalBroker, namespace: str | None = None, client: str | None = None) -> BusSettings:
    return BusSettings(**kafka_settings(broker, namespace or f"t{next(_namespaces)}-{os.getpid()}", client))


def read_topics(settings: BusSettings, topics: Sequence[str], expected: int, timeout_s: float = 60) -> list[Delivery]:
    """Everything on `topics` from the beginning (outside any group, so no join wait), until `expected` arrived."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    names = [settings.topic_prefix + topic for topic in topics]
    partitions = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                topic = tp.topic[len(settings.topic_prefix) :]
                got += [Delivery(topic, tp.partition, r.offset, r.key, r.value, list(r.headers)) for r in records]
    finally:
        consumer.close()
    return got


def committed(settings: BusSettings, service: str) -> dict[tuple[str, int], int]:
    """The offsets a service's consumer group has committed, by (unprefixed topic, partition)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        group = settings.group_prefix + service
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {(tp.topic[len(settings.topic_prefix) :], tp.partition): meta.offset for tp, meta in offsets.items()}


def s3_env(s3: LocalS3) -> dict[str, str]:
    return {"LEMA_S3_ACCESS_KEY": s3.access_key, "LEMA_S3_SECRET_KEY": s3.secret_key}


def store_settings(s3: LocalS3, bucket: str) -> dict[str, Any]:
    return {"kind": "minio", "endpoint": s3.endpoint, "bucket": bucket}


@dataclass
class ServiceChild:
    """A `lema serve <service>` child process, its ports and its log file."""

    service: str
    config: Path
    log: Path
    env: dict[str, str]
    overrides: list[str] = field(default_factory=list)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceChild:
        command = [sys.executable, "-m", "lema.cli", "serve", self.service, "--config", str(self.config)]
        settings = [
            f"server.grpc_port={self.grpc_port}",
            f"server.metrics_port={self.metrics_port}",
            "server.host=127.0.0.1",
            *self.overrides,
        ]
        for setting in settings:
            command += ["--set", setting]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_serving(self, timeout_s: float = 300) -> ServiceChild:
        assert self.process is not None
        wait_serving(self.target, self.process, self.log, timeout_s)
        return self

    def metric(self, family: str, **labels: str) -> float:
        """The sum of a metric family's samples (matching `labels`) on the service's /metrics; 0 until it answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(
            sample.value
            for parsed in text_string_to_metric_families(text)
            if parsed.name == family
            for sample in parsed.samples
            if sample.name.endswith("_total") and labels.items() <= sample.labels.items()
        )

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def stop(self) -> int:
        return self.kill(signal.SIGTERM)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def wait_serving(target: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 300) -> None:
    """Until the server at `target` reports SERVING; fails with the log's tail if `process` exits first."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING within {timeout_s}s:\n{log.read_text(errors='replace')[-4000:]}")


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def start_services(
    services: Sequence[str], config: Path, logs: Path, env: dict[str, str], overrides: Sequence[str] = ()
) -> dict[str, ServiceChild]:
    """Start the services in parallel and wait until each one is SERVING."""
    started = {
        name: ServiceChild(name, config, logs / f"{name}.log", env, list(overrides)).start() for name in services
    }
    for process in started.values():
        process.wait_serving()
    return started
