"""Fault drills on the whole platform: five `lema serve` processes, a Tansu broker keeping its data in S3 (moto),
the dataset in another S3 endpoint of the same moto, and an OpenAI-compatible LLM server (`stub_llm.py`) that can be
stopped. Each drill feeds the next three questions, injects one fault mid-flow, and then asserts that the dataset
equals what `lema run` writes for the questions fed so far (0 lost, 0 duplicated) and that every service is alive.

The drills share one platform and run in file order (each adds to the dataset the previous ones left). They take a
few minutes: marked `fault`, run by `make test-faults` (see .ci/run), not by `make test`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio
from platform_testing import REPO, ServiceChild, bus_settings, read_topics, start_services, write_config

from lema.bus.base import Message, Topics
from lema.bus.kafka import RawMessage, kafka_bus
from lema.config import BusSettings, LemaSettings, StoreSettings, load_settings
from lema.dataset import DatasetSinkError, create_sink
from lema.dataset.reader import export
from lema.inputs import load_questions
from lema.runtime.infra import LocalBroker, LocalS3, free_port, wait_for_port
from lema.runtime.progress import SERVICE_INPUTS
from lema.store import create_store
from lema.store.base import ArtifactStore
from lema.store.local import LocalStore

pytestmark = [pytest.mark.fault, pytest.mark.slow]

RUN = "faults"
QUESTIONS = REPO / "examples" / "data" / "demo_problems.jsonl"
CHUNK = 3
DATASET_FILES = ("cot.jsonl", "corrections.jsonl", "run_summary.json")
SUMMARY_COUNTS = ("questions", "stages", "drops")
"""What of `run_summary.json` is compared: its counts (not its timings or token usage)."""
SETTLE_TIMEOUT_S = 300
LLM_DELAY_S = 1.5
"""Each stub completion takes this long: a chunk's flow lasts several seconds, so a fault lands mid-flow."""


def pipeline(llm_url: str) -> dict[str, object]:
    return {
        "run": {"name": RUN},
        "llms": {
            "smollm2": {
                "backend": "openai",
                "model": "stub",
                "base_url": llm_url,
                "retry_window_s": 2,
                "retry_backoff_s": 0.1,
                "timeout_s": 10,
            }
        },
        "sample": {"samples_per_model": 2, "batch_size": 4},
        "correct": {"show_gold": True, "batch_size": 4},
        "evolve": {"rounds": 1, "questions_per_seed": 1, "votes": 1},
        "checker": {"workers": 1},
    }


class StubLLM:
    """`stub_llm.py` as a child process on a fixed port, so that it can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = Path(__file__).parent / "stub_llm.py"
        command = [sys.executable, str(server), str(self.port), str(QUESTIONS), str(LLM_DELAY_S)]
        self.process = subprocess.Popen(command)
        wait_for_port(self.port, 20, "the stub LLM server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@dataclass
class Platform:
    services: dict[str, ServiceChild]
    broker: LocalBroker
    dataset_s3: LocalS3
    llm: StubLLM
    bus: BusSettings
    store: ArtifactStore
    config: Path
    env: dict[str, str]
    tmp: Path
    fed: int = 0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("faults")
    broker_s3, dataset_s3 = LocalS3(), LocalS3()  # one moto backend, two endpoints: each can be cut on its own
    credentials = {"LEMA_S3_ACCESS_KEY": broker_s3.access_key, "LEMA_S3_SECRET_KEY": broker_s3.secret_key}
    Minio(broker_s3.endpoint, broker_s3.access_key, broker_s3.secret_key, secure=False).make_bucket("tansu-faults")
    aws = {
        "AWS_ACCESS_KEY_ID": broker_s3.access_key,
        "AWS_SECRET_ACCESS_KEY": broker_s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT": f"http://{broker_s3.endpoint}",
        "AWS_ALLOW_HTTP": "true",
    }
    broker = LocalBroker(log_path=tmp / "tansu.log", storage_engine="s3://tansu-faults/", env=aws)
    llm = StubLLM()
    llm.start()
    bus = bus_settings(broker, "faults")
    store = {"kind": "minio", "endpoint": dataset_s3.endpoint, "bucket": "faults"}
    config = write_config(tmp / "platform.yaml", {**pipeline(llm.url), "bus": bus.model_dump(), "store": store})
    env = {**credentials, "OMP_NUM_THREADS": "1"}
    logs = tmp / "logs"
    logs.mkdir()
    services = start_services(list(SERVICE_INPUTS), config, logs, env, ["server.drain_delay_s=0"])
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in credentials.items():
                patch.setenv(name, value)
            yield Platform(
                services,
                broker,
                dataset_s3,
                llm,
                bus,
                create_store(StoreSettings.model_validate(store)),
                config,
                env,
                tmp,
            )
    finally:
        for service in services.values():
            service.stop()
        llm.stop()
        broker.close()
        dataset_s3.stop()
        broker_s3.stop()


def embedded_dataset(platform: Platform, questions: int) -> dict[str, list[str]]:
    """The reference: `lema run` over the first `questions` questions, same LLM server, in-process bus."""
    root = platform.tmp / f"embedded-{questions}"
    settings = {
        **pipeline(platform.llm.url),
        "input": {"path": str(QUESTIONS), "limit": questions},
        "run": {"name": RUN, "work_dir": str(root / "work")},
        "store": {"root": str(root / "runs")},
    }
    config = write_config(platform.tmp / f"embedded-{questions}.yaml", settings)
    done = subprocess.run(
        [sys.executable, "-m", "lema.cli", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {name: comparable(name, (root / "runs" / RUN / name).read_text()) for name in DATASET_FILES}


def comparable(name: str, text: str) -> list[str]:
    """A dataset file as lines; for the summary, one line per count compared."""
    if name != "run_summary.json":
        return text.splitlines()
    summary = json.loads(text)
    return [json.dumps({key: summary.get(key)}, sort_keys=True) for key in SUMMARY_COUNTS]


def platform_dataset(platform: Platform) -> dict[str, list[str]]:
    """The platform's dataset as `lema dataset export` writes it, read from the table the writers append to."""
    settings = load_settings(platform.config, [], settings_cls=LemaSettings)
    try:
        sink = create_sink(settings, writer="faults-test", create=False)
    except DatasetSinkError:  # no writer has created the table yet
        return {name: [] for name in DATASET_FILES}
    exported = LocalStore(platform.tmp / "exported")
    export(sink, RUN, exported, "", settings.dataset)
    return {name: comparable(name, exported.get_bytes(name).decode()) for name in DATASET_FILES}


def feed_next_chunk(platform: Platform) -> None:
    """Publish the next questions of the file, as `lema submit` does (same records as the embedded run reads)."""
    questions = load_questions(str(QUESTIONS), "auto", None, platform.fed + CHUNK)[platform.fed :]
    producer = kafka_bus(platform.bus, client_id="faults-submit")
    try:
        producer.publish([Message(Topics.QUESTIONS, q.key, q) for q in questions])
    finally:
        producer.close()
    platform.fed += CHUNK


def log_count(platform: Platform, text: str) -> int:
    return sum(child.log.read_text(errors="replace").count(text) for child in platform.services.values())


def drill(platform: Platform, fault: Callable[[], None], evidence: str) -> None:
    """Feed the next chunk, run `fault`, then wait until the dataset equals the embedded run's; assert the services
    saw the fault (`evidence` appears in their logs), 0 lost, 0 duplicated and every service alive, and print how
    long the platform took to complete the dataset after the fault ended."""
    expected = embedded_dataset(platform, platform.fed + CHUNK)
    seen_before = log_count(platform, evidence)
    feed_next_chunk(platform)
    fault_started = time.monotonic()
    fault()
    fault_ended = time.monotonic()
    deadline = fault_ended + SETTLE_TIMEOUT_S
    got = platform_dataset(platform)
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        got = platform_dataset(platform)
    caught_up = time.monotonic()
    assert got["run_summary.json"] == expected["run_summary.json"], "the run summary's counts differ"
    for name in DATASET_FILES[:2]:
        ids = [json.loads(line)["id"] for line in got[name]]
        want = {json.loads(line)["id"] for line in expected[name]}
        assert len(ids) == len(set(ids)), f"{name}: duplicated {len(ids) - len(set(ids))} record(s)"
        assert set(ids) >= want, f"{name}: lost {len(want - set(ids))} of {len(want)} record(s)"
        assert got[name] == expected[name], f"{name}: differs from the embedded run"
    for child in platform.services.values():
        assert child.process is not None and child.process.poll() is None, f"{child.service} died:\n{child.tail()}"
    seen = log_count(platform, evidence) - seen_before
    assert seen > 0, f"no service logged {evidence!r}: the fault missed the flow"
    records = {name: len(expected[name]) for name in DATASET_FILES[:2]}
    stages = json.loads(expected["run_summary.json"][1])["stages"]
    print(
        f"\n[drill] fault {fault_ended - fault_started:.1f} s, {seen} x {evidence!r}; dataset complete "
        f"{caught_up - fault_ended:.1f} s after it ended; {records} records, 0 lost, 0 duplicated; stages {stages}"
    )


def test_broker_stopped_and_started_again(platform: Platform) -> None:
    def fault() -> None:
        time.sleep(0.5)  # the sampler has its batch and is waiting for the LLM: its results meet a dead broker
        platform.broker.stop()
        time.sleep(10)
        platform.broker.start()

    # A 10 s outage is absorbed by the clients' own retries (the producer holds unacknowledged results until
    # the broker is back); the evidence is then the clients' refused connections, not a lema "unavailable" line.
    refused = {"librdkafka": "Connection refused", "kafka-python": "ECONNREFUSED"}[platform.bus.client]
    drill(platform, fault, refused)


def test_llm_server_down_for_30s(platform: Platform) -> None:
    def fault() -> None:
        platform.llm.stop()
        time.sleep(30)
        platform.llm.start()

    drill(platform, fault, "llm unavailable")


def test_dataset_store_refusing_connections_for_30s(platform: Platform) -> None:
    def fault() -> None:
        time.sleep(1)
        platform.dataset_s3.stop()
        time.sleep(30)
        platform.dataset_s3.start()

    drill(platform, fault, "store unavailable")


def test_oversized_and_malformed_messages_and_a_killed_checker(platform: Platform) -> None:
    def fault() -> None:
        producer = kafka_bus(platform.bus.model_copy(update={"max_message_bytes": 8 * 1024 * 1024}), "faults-poison")
        try:
            poison = [RawMessage(topic, b"poison", b"\xff not an envelope", []) for topic in Topics.ALL[:-2]]
            huge = [RawMessage(topic, b"huge", b"\x00" * (5 * 1024 * 1024), []) for topic in Topics.ALL[:-2]]
            producer.publish_raw(poison + huge)
        finally:
            producer.close()
        checker = platform.services["checker"]
        checker.kill(signal.SIGKILL)
        checker.start().wait_serving()  # what `lema up` does for it (tested in test_service_lifecycle)

    drill(platform, fault, "dead-lettering")
    dead = read_topics(platform.bus, [Topics.DLQ], expected=12, timeout_s=30)
    assert {d.key for d in dead} >= {b"poison", b"huge"}
    assert all(d.value is None for d in dead if d.key == b"huge")
