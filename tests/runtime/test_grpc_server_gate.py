"""The grpc.aio server's own mechanics, on a gate service whose calls block on the server's blocking threads until
the test opens the gate: concurrency limits, deadlines of queued work, draining and stopping, metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from lema.runtime.grpc_server import BlockingPool, Context, GrpcServer, Registry, ServiceBinding
from lema.runtime.settings import ServerSettings

WAIT = "/test.Gate/Wait"
ECHO = "/test.Gate/Echo"


class Gate:
    """`Wait` runs its work on the blocking threads and returns once the gate opens; `Echo` answers at once."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started: list[bytes] = []

    def _work(self, request: bytes) -> bytes:
        self.started.append(request)
        self.open.wait(30)
        return request

    def binding(self) -> ServiceBinding:
        def register(server: Registry, blocking: BlockingPool) -> None:
            async def wait(request: bytes, context: Context) -> bytes:
                return await blocking.run(context, self._work, request)

            async def echo(request: bytes, _context: Context) -> bytes:
                return request

            methods = {
                "Wait": grpc.unary_unary_rpc_method_handler(wait),
                "Echo": grpc.unary_unary_rpc_method_handler(echo),
            }
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Gate", methods),))

        return ServiceBinding("test.Gate", register)


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` (up to 30 s, a hang guard, not a speed check)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


@pytest.fixture
def gate() -> Iterator[Gate]:
    opened = Gate()
    yield opened
    opened.open.set()  # free the blocking threads whatever the test did


def waits_ended(code: str) -> float:
    """How many `Wait` calls the server's metrics counted as ending with `code`."""
    labels = {"service": "test.Gate", "method": "Wait", "code": code}
    return REGISTRY.get_sample_value("lema_rpc_requests_total", labels) or 0.0


def serve(gate: Gate, **server: object) -> GrpcServer:
    settings = ServerSettings.model_validate({"host": "127.0.0.1", "grpc_port": 0, "drain_delay_s": 0, **server})
    started = GrpcServer(settings, [gate.binding()])
    started.start()
    return started


def health_status(channel: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def refused(channel: grpc.Channel) -> bool:
    try:
        channel.unary_unary(ECHO)(b"new", timeout=5)
    except grpc.RpcError as exc:  # a call racing the server's GOAWAY is CANCELLED, later ones UNAVAILABLE
        assert exc.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
        return True
    return False


def test_calls_beyond_max_concurrent_rpcs_are_resource_exhausted(gate: Gate) -> None:
    server = serve(gate, max_concurrent_rpcs=2, blocking_threads=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            wait = channel.unary_unary(WAIT)
            calls = [wait.future(bytes([i]), timeout=30) for i in range(2)]
            until(lambda: len(gate.started) == 2, "both calls' work running at once")
            with pytest.raises(grpc.RpcError) as raised:
                wait(b"x", timeout=5)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.open.set()
            assert sorted(call.result() for call in calls) == [b"\x00", b"\x01"]

            def answered() -> bool:
                try:
                    return bool(wait(b"y", timeout=10) == b"y")
                except grpc.RpcError as exc:  # a call's slot frees a moment after its answer goes out
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    return False

            until(answered, "a call answered: the limit counts calls in progress, not calls ever made")
    finally:
        server.stop()


def test_work_whose_deadline_passes_while_it_waits_for_a_thread_is_not_started(gate: Gate) -> None:
    server = serve(gate, blocking_threads=1)
    before = waits_ended("DEADLINE_EXCEEDED")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            wait = channel.unary_unary(WAIT)
            first = wait.future(b"first", timeout=30)
            until(lambda: gate.started == [b"first"], "the first call's work running")
            with pytest.raises(grpc.RpcError) as raised:
                wait(b"late", timeout=0.3)  # queued behind the first on the one thread
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(1)  # the server's deadline is its own: the call reached it a moment after it was sent
            gate.open.set()
            assert first.result() == b"first"
            assert wait(b"next", timeout=10) == b"next"  # runs after wherever "late" went on the same thread
        assert gate.started == [b"first", b"next"]
        until(lambda: waits_ended("DEADLINE_EXCEEDED") == before + 1, "the late call counted as DEADLINE_EXCEEDED")
    finally:
        server.stop()


def test_work_of_a_call_its_caller_cancelled_while_it_waited_for_a_thread_is_not_started(gate: Gate) -> None:
    server = serve(gate, blocking_threads=1)
    before = waits_ended("CANCELLED")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            wait = channel.unary_unary(WAIT)
            first = wait.future(b"first", timeout=30)
            until(lambda: gate.started == [b"first"], "the first call's work running")
            given_up = wait.future(b"given up", timeout=30)  # queued behind the first on the one thread
            time.sleep(0.5)  # let the server receive it before the client gives up
            given_up.cancel()
            until(lambda: waits_ended("CANCELLED") == before + 1, "the cancelled call counted as CANCELLED")
            gate.open.set()
            assert first.result() == b"first"
            assert wait(b"next", timeout=10) == b"next"  # runs after wherever "given up" went on the same thread
        assert gate.started == [b"first", b"next"]
    finally:
        server.stop()


def test_stop_reports_not_serving_answers_while_draining_and_lets_in_flight_calls_finish(gate: Gate) -> None:
    server = serve(gate, drain_delay_s=1.0, grace_s=30)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        in_flight = channel.unary_unary(WAIT).future(b"in flight", timeout=60)
        until(lambda: gate.started == [b"in flight"], "the call's work running")
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        until(lambda: health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
        server.set_serving(True)  # a dependency coming back must not undo the drain
        assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert channel.unary_unary(ECHO)(b"still answering", timeout=5) == b"still answering"
        until(lambda: refused(channel), "new calls refused once the drain delay is over")
        assert not in_flight.done()
        gate.open.set()  # within grace_s
        assert in_flight.result() == b"in flight"
        stopping.join()
    server.set_serving(False)  # after stop: nothing to report to, and no error


def test_calls_still_running_after_the_grace_period_are_cut_off(gate: Gate) -> None:
    server = serve(gate, grace_s=0.2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        in_flight = channel.unary_unary(WAIT).future(b"slow", timeout=60)
        until(lambda: gate.started == [b"slow"], "the call's work running")
        server.stop()  # returns although the gate is still closed
        assert not gate.open.is_set()
        with pytest.raises(grpc.RpcError) as raised:
            in_flight.result()
        assert raised.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
