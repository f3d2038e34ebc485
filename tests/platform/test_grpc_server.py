"""The gRPC server on the real checker, in this process: health, reflection, errors, deadlines, auth, TLS, metrics."""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from lema.config import LemaSettings
from lema.llm.base import Completion, GenerationRequest, LLMBackend, TokenUsage
from lema.llm.batching import BatchingBackend
from lema.pipeline import Resources
from lema.runtime.grpc_server import GrpcServer
from lema.runtime.services import service_bindings
from lema.runtime.settings import ServerSettings
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

TOKEN = "s3cret-token"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def resources() -> Iterator[Resources]:
    shared = Resources(LemaSettings())
    yield shared
    shared.close()


def start(resources: Resources, **server: object) -> GrpcServer:
    settings = ServerSettings.model_validate({"host": "127.0.0.1", "grpc_port": 0, "drain_delay_s": 0, **server})
    grpc_server = GrpcServer(settings, service_bindings("checker", LemaSettings(), resources))
    grpc_server.start()
    return grpc_server


@pytest.fixture(scope="module")
def server(resources: Resources) -> Iterator[GrpcServer]:
    started = start(resources, max_message_bytes=1024 * 1024)
    yield started
    started.stop()


@pytest.fixture
def checker(server: GrpcServer) -> Iterator[checker_pb2_grpc.CheckerServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield checker_pb2_grpc.CheckerServiceStub(channel)


def test_check_and_check_batch_of_a_thousand_pairs(checker: checker_pb2_grpc.CheckerServiceStub) -> None:
    reply = checker.Check(
        checker_pb2.CheckRequest(response="so 6 + 12 = 18. The answer is 18", gold="18", task="gsm8k")
    )
    assert (reply.correct, reply.predicted, reply.reason) == (True, "18", "numeric_equal")
    items = [
        checker_pb2.CheckRequest(
            response=f"Step 1: done.\nThe answer is {i if i % 3 else i + 1}", gold=str(i), task="gsm8k"
        )
        for i in range(1000)
    ]
    batch = checker.CheckBatch(checker_pb2.CheckBatchRequest(items=items), timeout=60)
    assert len(batch.results) == 1000
    assert [r.correct for r in batch.results] == [i % 3 != 0 for i in range(1000)]
    assert (batch.results[3].correct, batch.results[3].predicted) == (False, "4")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (checker_pb2.CheckRequest(response="The answer is 1", gold="1", task="chess"), "task: must be one of"),
        (checker_pb2.CheckRequest(response="The answer is 1", gold=" ", task="gsm8k"), "gold: required"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    checker: checker_pb2_grpc.CheckerServiceStub, request_: checker_pb2.CheckRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        checker.Check(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(field)


def test_a_bad_item_in_a_batch_is_named_by_its_index(checker: checker_pb2_grpc.CheckerServiceStub) -> None:
    items = [checker_pb2.CheckRequest(response="1", gold="1", task="gsm8k")] * 3
    items.append(checker_pb2.CheckRequest(response="1", gold="1", task=""))
    with pytest.raises(grpc.RpcError) as raised:
        checker.CheckBatch(checker_pb2.CheckBatchRequest(items=items))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "items[3].task: must be one of gsm8k, math, mcq, got ''"


def test_a_call_past_its_deadline_leaves_the_server_serving(checker: checker_pb2_grpc.CheckerServiceStub) -> None:
    """The client gives up on a long symbolic batch; the server must still answer the next call in time.

    (DEADLINE_EXCEEDED itself is the client's doing and proves nothing about the server, so it is not the point.)
    """
    symbolic = [
        checker_pb2.CheckRequest(response=f"\\boxed{{\\sqrt{{{i}}}+1}}", gold=f"1+\\sqrt{{{i}}}", task="math")
        for i in range(2, 400)
    ]
    with pytest.raises(grpc.RpcError) as raised:
        checker.CheckBatch(checker_pb2.CheckBatchRequest(items=symbolic), timeout=0.05)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answer = checker.Check(checker_pb2.CheckRequest(response="The answer is 7", gold="7", task="gsm8k"), timeout=30)
    assert answer.correct


def test_messages_over_the_size_limit_are_refused(checker: checker_pb2_grpc.CheckerServiceStub) -> None:
    huge = checker_pb2.CheckRequest(response="x" * (2 * 1024 * 1024), gold="1", task="gsm8k")
    with pytest.raises(grpc.RpcError) as raised:
        checker.Check(huge)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_undecodable_request_bytes_are_invalid_argument(server: GrpcServer) -> None:
    garbage = b"\xff\xff\xff\xff"  # a field header whose varint never ends: no protobuf message decodes it
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        unary = channel.unary_unary("/lema.v1.CheckerService/Check")
        with pytest.raises(grpc.RpcError) as raised:
            unary(garbage, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "CheckerService/Check" in str(raised.value.details())
        streaming = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as raised:
            list(streaming(iter([garbage]), timeout=10))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = checker_pb2_grpc.CheckerServiceStub(channel).Check(
            checker_pb2.CheckRequest(response="The answer is 3", gold="3", task="gsm8k")
        )
    assert reply.correct


def test_a_briefly_taken_port_is_retried(resources: Resources) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    threading.Timer(0.5, taken.close).start()
    started = start(resources, grpc_port=port, bind_retry_s=20)
    try:
        assert started.port == port
    finally:
        started.stop()


def test_a_port_taken_for_longer_than_the_retry_window_fails_naming_the_setting(resources: Resources) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match=r"server\.bind_retry_s"):
            start(resources, grpc_port=taken.getsockname()[1], bind_retry_s=0.3)


def test_health_follows_dependencies(resources: Resources) -> None:
    started = start(resources)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{started.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return int(health.Check(health_pb2.HealthCheckRequest(service=service)).status)

            started.set_serving(False)
            assert {status(""), status("lema.v1.CheckerService")} == {health_pb2.HealthCheckResponse.NOT_SERVING}
            started.set_serving(True)
            assert {status(""), status("lema.v1.CheckerService")} == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        started.stop()


def test_health_and_reflection(server: GrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lema.v1.CheckerService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in answer.list_services_response.service}
    assert {"lema.v1.CheckerService", "grpc.health.v1.Health"} <= names


def test_calls_are_counted_by_service_method_and_code(checker: checker_pb2_grpc.CheckerServiceStub) -> None:
    def count(code: str) -> float:
        labels = {"service": "lema.v1.CheckerService", "method": "Check", "code": code}
        return REGISTRY.get_sample_value("lema_rpc_requests_total", labels) or 0.0

    before_ok, before_bad = count("OK"), count("INVALID_ARGUMENT")
    checker.Check(checker_pb2.CheckRequest(response="The answer is 2", gold="2", task="gsm8k"))
    with pytest.raises(grpc.RpcError):
        checker.Check(checker_pb2.CheckRequest(response="The answer is 2", gold="2", task="nope"))
    # An aborted call is counted just after its status goes out, so the client may look a moment too early.
    deadline = time.monotonic() + 30
    while count("INVALID_ARGUMENT") == before_bad and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (count("OK"), count("INVALID_ARGUMENT")) == (before_ok + 1, before_bad + 1)


def test_token_auth(resources: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEMA_GRPC_TOKEN", TOKEN)
    secured = start(resources, auth="token")
    request = checker_pb2.CheckRequest(response="The answer is 2", gold="2", task="gsm8k")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
            stub = checker_pb2_grpc.CheckerServiceStub(channel)
            for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]:
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Check(request, metadata=metadata)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Check(request, metadata=(("authorization", f"Bearer {TOKEN}"),)).correct
            # Kubernetes probes carry no token: health stays open.
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        secured.stop()


def test_token_auth_without_a_token_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEMA_GRPC_TOKEN", raising=False)
    with pytest.raises(ValueError, match="LEMA_GRPC_TOKEN is empty"):
        ServerSettings(auth="token").token()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls(resources: Resources, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    secured = start(resources, tls_cert=cert, tls_key=key)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(
            f"127.0.0.1:{secured.port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        ) as channel:
            reply = checker_pb2_grpc.CheckerServiceStub(channel).Check(
                checker_pb2.CheckRequest(response="The answer is 2", gold="2", task="gsm8k"), timeout=10
            )
        assert reply.correct
    finally:
        secured.stop()


def test_model_services_name_bad_fields_and_report_llm_failures_as_unavailable(tmp_path: Path) -> None:
    """The LLM here replays an empty recording: every generation fails, as an unreachable model server would."""
    recording = tmp_path / "empty.jsonl"
    recording.write_text("")
    settings = LemaSettings.model_validate({"llms": {"smollm2": {"backend": "replay", "recording": str(recording)}}})
    resources = Resources(settings)
    bindings = [b for name in ("sampler", "corrector", "evolver") for b in service_bindings(name, settings, resources)]
    server = GrpcServer(ServerSettings(host="127.0.0.1", grpc_port=0, drain_delay_s=0), bindings)
    server.start()
    question = "Sam has 3 hats and buys 2 more. How many hats?"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            sampler = sampler_pb2_grpc.SamplerServiceStub(channel)
            corrector = corrector_pb2_grpc.CorrectorServiceStub(channel)
            evolver = evolver_pb2_grpc.EvolverServiceStub(channel)
            bad = {
                "samples_per_model: must be positive": lambda: list(
                    sampler.Sample(sampler_pb2.SampleRequest(question=question, task="gsm8k", samples_per_model=0))
                ),
                "models: ['gpt'] not served here": lambda: list(
                    sampler.Sample(sampler_pb2.SampleRequest(question=question, task="gsm8k", models=["gpt"]))
                ),
                "question: required": lambda: corrector.Correct(
                    corrector_pb2.CorrectRequest(wrong_solution="The answer is 4", task="gsm8k")
                ),
                "gold: required": lambda: corrector.Correct(
                    corrector_pb2.CorrectRequest(question=question, wrong_solution="4", task="gsm8k", gold="")
                ),
                "seed: required": lambda: evolver.Evolve(evolver_pb2.EvolveRequest()),
            }
            for field, call in bad.items():
                with pytest.raises(grpc.RpcError) as raised:
                    call()
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert raised.value.details().startswith(field), raised.value.details()
            failing = [
                lambda: list(sampler.Sample(sampler_pb2.SampleRequest(question=question, task="gsm8k"))),
                lambda: corrector.Correct(
                    corrector_pb2.CorrectRequest(question=question, wrong_solution="The answer is 4", task="gsm8k")
                ),
                lambda: evolver.Evolve(
                    evolver_pb2.EvolveRequest(seed=records_pb2.Question(text=question, gold="5", task="gsm8k"))
                ),
            ]
            for call in failing:
                with pytest.raises(grpc.RpcError) as raised:
                    call()
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "no recorded completion" in raised.value.details()
    finally:
        server.stop()
        resources.close()


def test_the_images_health_check_speaks_tls_and_token_as_the_chart_uses_it(
    resources: Resources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker/grpc_health_check.py is the chart's readiness probe under TLS and its `helm test`: run it for real."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("grpc_health_check", REPO / "docker" / "grpc_health_check.py")
    assert spec is not None and spec.loader is not None
    health_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_check)
    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("LEMA_GRPC_TOKEN", TOKEN)
    secured = start(resources, tls_cert=cert, tls_key=key, auth="token")
    target = f"127.0.0.1:{secured.port}"
    tls = ["--ca", str(cert), "--server-name", "localhost"]
    try:
        assert health_check.main([*tls, target]) == 0  # the readiness probe
        assert health_check.main([*tls, "--check-answer", target, target]) == 0  # the helm test
        assert health_check.main(["--timeout", "2", target]) == 1  # plaintext to a TLS port
        assert health_check.main([*tls, "--server-name", "elsewhere", "--timeout", "2", target]) == 1
        monkeypatch.delenv("LEMA_GRPC_TOKEN")
        assert health_check.main([*tls, target]) == 0  # health needs no token
        assert health_check.main([*tls, "--check-answer", target, target]) == 1  # a Check does
    finally:
        secured.stop()


def test_check_settles_symbolic_and_long_responses_on_the_blocking_threads(
    checker: checker_pb2_grpc.CheckerServiceStub,
) -> None:
    symbolic = checker.Check(
        checker_pb2.CheckRequest(response="\\boxed{\\frac{\\sqrt{2}}{2}}", gold="\\frac{1}{\\sqrt{2}}", task="math"),
        timeout=60,
    )
    assert (symbolic.correct, symbolic.reason) == (True, "symbolic_equal")
    long = "Step: nothing yet.\n" * 2000 + "The answer is 12"
    assert checker.Check(checker_pb2.CheckRequest(response=long, gold="12", task="gsm8k"), timeout=30).correct


class Scripted:
    """An LLM backend answering every request with `text`, after `before()` (which may block to shape a test)."""

    def __init__(self, model: str, text: str, before: Callable[[], object] = lambda: None) -> None:
        self.model, self.text, self.before = model, text, before
        self.usage = TokenUsage()
        self.batches: list[int] = []
        """The number of requests in each `generate` call."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.batches.append(len(requests))
        self.before()
        return [[Completion(self.text, 1, 1)] * request.n for request in requests]

    def close(self) -> None:
        pass


def serve_models(
    names: Sequence[str], backends: dict[str, LLMBackend], **server: object
) -> tuple[GrpcServer, Resources]:
    """A server for the model services `names`, their LLMs answered by `backends` (by LLM name)."""
    llms = {name: {"backend": "replay", "recording": "unused.jsonl"} for name in backends}
    first = next(iter(backends))
    settings = LemaSettings.model_validate(
        {
            "llms": llms,
            "sample": {"models": list(backends), "samples_per_model": 2},
            "correct": {"model": first},
            "evolve": {"model": first},
        }
    )
    resources = Resources(settings, backend_factory=lambda name, _: backends[name])
    bindings = [b for name in names for b in service_bindings(name, settings, resources)]
    server_settings = ServerSettings.model_validate({"host": "127.0.0.1", "grpc_port": 0, "drain_delay_s": 0, **server})
    grpc_server = GrpcServer(server_settings, bindings)
    grpc_server.start()
    return grpc_server, resources


def test_concurrent_correct_calls_share_one_batch_of_the_engine(tmp_path: Path) -> None:
    """In-process backends batch across callers (`BatchingBackend`): 8 concurrent calls must reach it together."""
    corrected = "Incorrect step: 1\nExplanation: it adds.\nCorrected solution:\nStep 1: 3 * 4 = 12.\nThe answer is 12"
    model = Scripted("smollm2", corrected)
    engine = BatchingBackend(model, max_batch_requests=8, batch_wait_ms=10_000)  # the wait: only a hang guard
    server, resources = serve_models(["corrector"], {"smollm2": engine})
    request = corrector_pb2.CorrectRequest(
        question="3 boxes hold 4 pens each. How many pens?", wrong_solution="3 + 4 = 7. The answer is 7", task="gsm8k"
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            corrector = corrector_pb2_grpc.CorrectorServiceStub(channel)
            calls = [corrector.Correct.future(request, timeout=60) for _ in range(8)]
            replies = [call.result() for call in calls]
        assert [reply.correction.answer for reply in replies] == ["12"] * 8
        assert model.batches == [8]
    finally:
        server.stop()
        resources.close()


def test_sample_streams_each_models_paths_as_soon_as_that_model_answers(tmp_path: Path) -> None:
    first_received = threading.Event()

    def after_first() -> None:
        assert first_received.wait(10), "the fast model's paths never reached the client before the slow one answered"

    backends = {
        "fast": Scripted("fast", "Step 1: 2 + 3 = 5.\nThe answer is 5"),
        "slow": Scripted("slow", "Step 1: 2 + 2 = 4.\nThe answer is 4", after_first),
    }
    server, resources = serve_models(["sampler"], backends)

    def count(code: str) -> float:
        labels = {"service": "lema.v1.SamplerService", "method": "Sample", "code": code}
        return REGISTRY.get_sample_value("lema_rpc_requests_total", labels) or 0.0

    before = count("OK")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = sampler_pb2_grpc.SamplerServiceStub(channel).Sample(
                sampler_pb2.SampleRequest(question="Sam has 2 hats and buys 3. How many?", task="gsm8k"), timeout=60
            )
            first = next(stream)
            first_received.set()  # only now may the slow model answer
            paths = [first, *stream]
        assert [(p.model, p.answer) for p in paths] == [("fast", "5")] * 2 + [("slow", "4")] * 2
        assert count("OK") == before + 1
    finally:
        first_received.set()
        server.stop()
        resources.close()
