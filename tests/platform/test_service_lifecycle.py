"""`lema serve` as a real process: graceful shutdown on SIGTERM, configuration errors at start."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from platform_testing import REPO, ServiceChild, write_config

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
    assert f"{config}: server.grpc_port: Input should be a valid integer" in done.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "lema.cli", "serve", "painter"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "unknown service 'painter'" in unknown.stderr
