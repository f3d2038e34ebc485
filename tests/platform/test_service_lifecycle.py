"""`lema serve` as a real process: graceful shutdown on SIGTERM, configuration errors at start."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_testing import REPO, ServiceChild, wait_serving, write_config

from lema.runtime.infra import LOCAL_S3_SECRET_KEY, free_port
from lema.v1 import checker_pb2, checker_pb2_grpc


def slow_batch(items: int) -> checker_pb2.CheckBatchRequest:
    """LaTeX answers only Math-Verify can settle: a call that takes seconds."""
    return checker_pb2.CheckBatchRequest(
        items=[
            checker_pb2.CheckRequest(
                response=f"The answer is $\\boxed{{\\frac{{{i}}}{{{i + 1}}}+\\sqrt{{{i}}}}}$",
                gold=f"\\sqrt{{{i}}}+\\frac{{{i}}}{{{i + 1}}}",
                task="math",
            )
            for i in range(2, 2 + items)
        ]
    )


def test_sigterm_reports_not_serving_while_in_flight_calls_finish(tmp_path: Path, logs: Path) -> None:
    config = write_config(tmp_path / "checker.yaml", {"checker": {"workers": 1}})
    service = ServiceChild("checker", config, logs / "checker.log", {}, ["server.drain_delay_s=2"])
    service.start().wait_serving()
    with grpc.insecure_channel(service.target) as channel:
        checker = checker_pb2_grpc.CheckerServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        in_flight = checker.CheckBatch.future(slow_batch(60), timeout=120)
        time.sleep(0.5)
        assert not in_flight.done(), "the call finished before the test could stop the server"
        service.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + 2
        status = health_pb2.HealthCheckResponse.SERVING
        while status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not in_flight.done(), "health should flip while the call is still in flight"
        results = in_flight.result().results
        assert len(results) == 60 and all(r.correct for r in results)
    assert service.process.wait(timeout=60) == 0, service.tail()  # type: ignore[union-attr]
    assert "gRPC server stopped" in service.tail()


def test_bad_configuration_fails_fast_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", {"server": {"grpc_port": "not-a-port"}})
    done = subprocess.run(
        [sys.executable, "-m", "lema.cli", "serve", "checker", "--config", str(config)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{config}:2: server.grpc_port: Input should be a valid integer" in done.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "lema.cli", "serve", "painter"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "unknown service 'painter'" in unknown.stderr


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free loopback ports."""
    for _ in range(100):
        base = random.randint(20_000, 60_000)
        sockets = []
        try:
            for port in range(base, base + size):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError(f"no {size} consecutive free ports")


def test_up_runs_every_service_restarts_a_killed_one_and_prints_no_secret(tmp_path: Path) -> None:
    recording = tmp_path / "recording.jsonl"
    recording.write_text("")  # a replay LLM loads at once: this test is about processes, not models
    config = write_config(
        tmp_path / "up.yaml",
        {
            "llms": {"smollm2": {"backend": "replay", "recording": str(recording)}},
            "bus": {"max_poll_interval_ms": 6000, "session_timeout_ms": 6000},
        },
    )
    grpc_base, metrics_base = free_port_block(5), free_port_block(5)
    command = [sys.executable, "-m", "lema.cli", "up", "--embedded-infra", "--config", str(config)]
    command += ["--grpc-port", str(grpc_base), "--metrics-port", str(metrics_base)]
    command += ["--kafka-port", str(free_port()), "--s3-port", str(free_port())]
    log = tmp_path / "up.log"
    with log.open("wb") as output:
        up = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    try:
        for port in range(grpc_base, grpc_base + 5):
            wait_serving(f"127.0.0.1:{port}", up, log, timeout_s=180)
        (checker_pid,) = re.findall(r"checker: pid (\d+)", log.read_text())
        os.kill(int(checker_pid), signal.SIGKILL)
        deadline = time.monotonic() + 120
        while len(re.findall(r"checker: pid (\d+)", log.read_text())) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        wait_serving(f"127.0.0.1:{grpc_base + 1}", up, log, timeout_s=180)
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "checker: exited with code -9; restarting in 1 s" in text
    assert "all services started; feed them with" in text and "lema submit QUESTIONS.jsonl" in text
    assert "LEMA_S3_SECRET_KEY" in text and LOCAL_S3_SECRET_KEY not in text
    assert "gRPC 127.0.0.1:" in text and "0.0.0.0" not in text
    assert text.count(": stopped") == 5
