"""The whole platform on the real SmolLM2: five `lema serve` processes over the Tansu broker and the S3 server.

One platform serves the module: the topic flow (fed by `lema submit`, after a malformed message on every input
topic) must give the dataset the embedded runtime gives for the same seed and input; then a client calls every
service through the generated stubs, and Prometheus scrapes them all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_testing import (
    GSM8K_TEST,
    REPO,
    ServiceChild,
    bus_settings,
    read_topics,
    s3_env,
    start_services,
    store_settings,
    write_config,
)

from lema.bus.base import Topics
from lema.bus.kafka import RawMessage, ensure_topics, kafka_bus
from lema.config import BusSettings, StoreSettings
from lema.dataset.reader import RUNTIME_KEYS
from lema.records import Question
from lema.runtime.infra import LocalBroker, LocalS3, free_port
from lema.runtime.progress import SERVICE_INPUTS
from lema.runtime.wire import from_message, to_message
from lema.store import create_store
from lema.store.base import ArtifactStore
from lema.v1 import (
    checker_pb2,
    checker_pb2_grpc,
    corrector_pb2,
    corrector_pb2_grpc,
    evolver_pb2,
    evolver_pb2_grpc,
    records_pb2,
    sampler_pb2,
    sampler_pb2_grpc,
)

pytestmark = pytest.mark.slow

RUN = "flow"
# One torch thread per process: three model services share two cores, and the embedded reference run must use
# the same arithmetic as they do.
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
PIPELINE = {
    "run": {"name": RUN},
    "input": {"path": str(GSM8K_TEST), "limit": 2},
    "llms": {"smollm2": {"backend": "transformers", "model": "smollm2-135m", "batch_size": 8}},
    "sample": {"samples_per_model": 2, "batch_size": 4, "params": {"max_tokens": 48, "seed": 3}},
    "correct": {"show_gold": True, "batch_size": 4, "params": {"max_tokens": 64}},
    "evolve": {
        "rounds": 1,
        "questions_per_seed": 1,
        "votes": 1,
        "params": {"max_tokens": 48},
        "vote_params": {"max_tokens": 48},
    },
    "checker": {"workers": 1},
}
DATASET_FILES = ("cot.jsonl", "corrections.jsonl")


@dataclass
class Platform:
    services: dict[str, ServiceChild]
    bus: BusSettings
    store: ArtifactStore
    config: Path
    env: dict[str, str]
    embedded: Path


def embedded_run(tmp: Path) -> Path:
    """The reference: `lema run` with the same pipeline settings, in-process bus and a local store."""
    config = write_config(
        tmp / "embedded.yaml",
        {**PIPELINE, "run": {**PIPELINE["run"], "work_dir": str(tmp / "work")}, "store": {"root": str(tmp / "runs")}},
    )
    done = subprocess.run(
        [sys.executable, "-m", "lema.cli", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **SINGLE_THREAD},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "runs" / RUN


@pytest.fixture(scope="module")
def platform(broker: LocalBroker, s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("platform")
    embedded = embedded_run(tmp)  # first: it also converts the model once into the cache the services load from
    bus = bus_settings(broker)
    store = store_settings(s3, "flow")
    config = write_config(tmp / "platform.yaml", {**PIPELINE, "bus": bus.model_dump(), "store": store})
    env = {**s3_env(s3), **SINGLE_THREAD}
    logs = tmp / "logs"
    logs.mkdir()
    services = start_services(list(SERVICE_INPUTS), config, logs, env, ["server.drain_delay_s=0"])
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, credential in s3_env(s3).items():
                patch.setenv(name, credential)  # for this process's own store client
            yield Platform(services, bus, create_store(StoreSettings.model_validate(store)), config, env, embedded)
    finally:
        for service in services.values():
            service.stop()


def test_topic_flow_gives_the_embedded_dataset_and_dead_letters_malformed_messages(platform: Platform) -> None:
    ensure_topics(platform.bus, Topics.ALL, partitions=4, replication_factor=1)
    producer = kafka_bus(platform.bus, client_id="test-malformed")
    input_topics = sorted({topic for topics in SERVICE_INPUTS.values() for topic in topics})
    producer.publish_raw(
        [RawMessage(topic, f"bad-{topic}".encode(), b"\x00 not protobuf", []) for topic in input_topics]
    )
    producer.close()
    # Every group that reads a topic dead-letters its malformed message; wait for them, so that they come before
    # the submission and its exit code (3 when something is dead-lettered while it follows the run).
    expected = {(platform.bus.group_prefix + s, t) for s, topics in SERVICE_INPUTS.items() for t in topics}
    letters = read_topics(platform.bus, [Topics.DLQ], expected=len(expected), timeout_s=300)

    submitted = subprocess.run(
        [
            sys.executable,
            "-m",
            "lema.cli",
            "submit",
            str(GSM8K_TEST),
            "--config",
            str(platform.config),
            "--timeout-s",
            "900",
        ],
        cwd=REPO,
        env={**os.environ, **platform.env},
        capture_output=True,
        text=True,
        timeout=960,
        check=False,
    )
    logs = "\n".join(f"--- {name}\n{s.tail(1500)}" for name, s in platform.services.items())
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr + logs
    assert "submitted 2 questions" in submitted.stdout and "done:" in submitted.stdout

    exported = subprocess.run(
        [sys.executable, "-m", "lema.cli", "dataset", "export", RUN, "--config", str(platform.config)],
        cwd=REPO,
        env={**os.environ, **platform.env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    for name in DATASET_FILES:
        assert platform.store.get_bytes(f"{RUN}/{name}") == (platform.embedded / name).read_bytes(), name
    platform_summary = json.loads(platform.store.get_bytes(f"{RUN}/run_summary.json"))
    embedded_summary = json.loads((platform.embedded / "run_summary.json").read_text())
    assert platform_summary.keys() == embedded_summary.keys()  # llms, processed, run and timings_s included
    produced = [key for key in platform_summary if key not in RUNTIME_KEYS]
    assert {k: embedded_summary[k] for k in produced} == {k: platform_summary[k] for k in produced}
    assert platform_summary["stages"]["sample"]["paths"] >= 4
    assert platform.store.exists(f"{RUN}/config.yaml") and platform.store.exists(f"{RUN}/prompts/correct-gsm8k.yaml")

    # Every group that reads a topic dead-lettered its malformed message, with the reason, and carried on.
    seen = set()
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["lema-error"].startswith(b"malformed message: not a lema.v1.Envelope")
        topic = headers["lema-source-topic"].decode()[len(platform.bus.topic_prefix) :]
        assert letter.key == f"bad-{topic}".encode()
        seen.add((headers["lema-consumer-group"].decode(), topic))
    assert seen == expected


def test_a_client_calls_every_service_through_the_generated_stubs(platform: Platform) -> None:
    question = "A baker makes 12 rolls and sells 5. How many rolls are left?"
    with grpc.insecure_channel(platform.services["sampler"].target) as channel:
        request = sampler_pb2.SampleRequest(question=question, task="gsm8k", samples_per_model=2)
        paths = list(sampler_pb2_grpc.SamplerServiceStub(channel).Sample(request, timeout=300))
    assert [p.sample_index for p in paths] == [0, 1] and all(p.text and p.model == "smollm2-135m" for p in paths)

    with grpc.insecure_channel(platform.services["checker"].target) as channel:
        checker = checker_pb2_grpc.CheckerServiceStub(channel)
        verdict = checker.Check(checker_pb2.CheckRequest(response=paths[0].text, gold="7", task="gsm8k"))
        assert verdict.reason
        pairs = [
            checker_pb2.CheckRequest(response=f"The answer is {i}", gold=str(i % 7), task="gsm8k") for i in range(1000)
        ]
        results = checker.CheckBatch(checker_pb2.CheckBatchRequest(items=pairs), timeout=60).results
        assert sum(r.correct for r in results) == 7

    with grpc.insecure_channel(platform.services["corrector"].target) as channel:
        corrector = corrector_pb2_grpc.CorrectorServiceStub(channel)
        wrong = "Step 1: The baker has 12 + 5 = 17 rolls.\nThe answer is 17"
        reply = corrector.Correct(
            corrector_pb2.CorrectRequest(question=question, wrong_solution=wrong, gold="7", task="gsm8k"), timeout=300
        )
        if reply.HasField("correction"):
            assert reply.correction.corrector_model == "smollm2-135m" and reply.correction.HasField("verify_reason")
        else:
            assert reply.dropped.stage == "correct" and reply.dropped.reason
        with pytest.raises(grpc.RpcError) as raised:
            corrector.Correct(corrector_pb2.CorrectRequest(question=question, task="gsm8k"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details().startswith("wrong_solution: required")

    seed = Question.create(question, "7", "gsm8k", "client")
    with grpc.insecure_channel(platform.services["evolver"].target) as channel:
        evolver = evolver_pb2_grpc.EvolverServiceStub(channel)
        evolved = evolver.Evolve(evolver_pb2.EvolveRequest(seed=to_message(seed, records_pb2.Question)), timeout=300)
        assert len(evolved.questions) + len(evolved.drops) == PIPELINE["evolve"]["questions_per_seed"]
        for message in evolved.questions:
            new = from_message(message, Question)
            assert (new.round, new.parent_id, new.source) == (1, seed.id, "evolved")
        with pytest.raises(grpc.RpcError) as raised:
            evolver.Evolve(evolver_pb2.EvolveRequest(seed=records_pb2.Question(text="No gold here", task="gsm8k")))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "seed.gold: Field required" in raised.value.details()

    with grpc.insecure_channel(platform.services["dataset-writer"].target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    results: list[dict[str, Any]] = body["data"]["result"]
    return results


def test_prometheus_scrapes_every_service(platform: Platform, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus'; .ci/run installs it)")
    targets = [f"127.0.0.1:{s.metrics_port}" for s in platform.services.values()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "lema", "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        checker = platform.services["checker"]
        before = checker.metric("lema_rpc_requests", service="lema.v1.CheckerService", method="Check")
        calls = 25
        with grpc.insecure_channel(checker.target) as channel:
            stub = checker_pb2_grpc.CheckerServiceStub(channel)
            for i in range(calls):
                stub.Check(checker_pb2.CheckRequest(response=f"The answer is {i}", gold="3", task="gsm8k"))
        query = 'sum(lema_rpc_requests_total{service="lema.v1.CheckerService",method="Check"})'
        deadline = time.monotonic() + 60
        up: list[dict[str, Any]] = []
        counted: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                up = _prometheus_query(port, 'up{job="lema"} == 1')
                counted = _prometheus_query(port, query)
            except OSError:
                pass  # still starting
            if len(up) == len(targets) and counted and float(counted[0]["value"][1]) >= before + calls:
                break
            time.sleep(1)
        assert sorted(r["metric"]["instance"] for r in up) == sorted(targets)
        assert float(counted[0]["value"][1]) == before + calls
        # Every model service exports its LLM's token counters.
        llm_series = _prometheus_query(port, 'lema_llm_prompt_tokens_total{model="smollm2-135m"}')
        assert len(llm_series) == 3
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
