"""The gRPC server every lema service runs: health, reflection, metrics, optional TLS and bearer-token auth.

Lifecycle: `start()` binds the port (retrying for `bind_retry_s` while it is taken, e.g. by the process this one
replaces) and reports SERVING; `set_serving(False)` reports NOT_SERVING while a dependency the service needs is down;
`stop()` (called on SIGTERM) reports NOT_SERVING so load balancers and Kubernetes stop routing here, waits
`drain_delay_s` while still answering, then refuses new calls and gives in-flight calls up to `grace_s` to finish.
Request bytes that do not decode as the method's message are INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lema.runtime import metrics
from lema.runtime.settings import ServerSettings

log = logging.getLogger(__name__)

# Probes and tooling work without a token: Kubernetes' gRPC probe cannot send one.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Behavior = Callable[[Any, grpc.ServicerContext], Any]


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that registers it; `name` is its full proto name."""

    name: str
    register: Callable[[grpc.Server], None]


def _wrap_behavior(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior, bool], Behavior],
    deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """`handler` with its behaviour replaced by `wrap(behaviour, streams_response)` (and its request deserializer by
    `deserializer` when given), keeping its kind."""
    decode, encode = deserializer or handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), decode, encode)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), decode, encode)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), decode, encode)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), decode, encode)


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
    return str(code.name)


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every call by service, method and final status code."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")

        def wrap(behavior: Behavior, streams: bool) -> Behavior:
            def record(context: grpc.ServicerContext, started: float, failed: bool) -> None:
                code = _code_name(context, failed)
                metrics.RPC_REQUESTS.labels(service, method, code).inc()
                metrics.RPC_DURATION.labels(service, method, code).observe(time.perf_counter() - started)

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    response = behavior(request, context)
                except BaseException:
                    record(context, started, failed=True)
                    raise
                record(context, started, failed=False)
                return response

            def streaming(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    yield from behavior(request, context)
                except BaseException:
                    record(context, started, failed=True)
                    raise
                record(context, started, failed=False)

            return streaming if streams else unary

        return _wrap_behavior(handler, wrap)


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without `authorization: Bearer <token>` metadata with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        presented = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(presented).encode(), self._expected):
            return handler

        def deny(_behavior: Behavior, _streams: bool) -> Behavior:
            def behavior(_request: Any, context: grpc.ServicerContext) -> Any:
                reason = "missing" if not presented else "invalid"
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason} bearer token in 'authorization' metadata")

            return behavior

        return _wrap_behavior(handler, deny)


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes did not decode, so the behaviour can answer INVALID_ARGUMENT."""

    error: str


class RequestDecodeInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Undecodable request bytes are the caller's mistake: INVALID_ARGUMENT, not the server's INTERNAL."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        streams_request = bool(handler.stream_unary or handler.stream_stream)

        def tolerant(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as exc:  # protobuf raises DecodeError, but any decoder failure means bad bytes
                return _Undecodable(f"request bytes do not decode as {details.method}'s message: {exc}")

        def reject(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            return request

        def wrap(behavior: Behavior, _streams: bool) -> Behavior:
            if streams_request:
                return lambda requests, context: behavior((reject(r, context) for r in requests), context)
            return lambda request, context: behavior(reject(request, context), context)

        return _wrap_behavior(handler, wrap, tolerant)


class GrpcServer:
    def __init__(self, settings: ServerSettings, services: Sequence[ServiceBinding]) -> None:
        self.settings = settings
        token = settings.token()
        interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor()]
        if token is not None:
            interceptors.append(TokenAuthInterceptor(token))
        interceptors.append(RequestDecodeInterceptor())
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        for service in services:
            service.register(self._server)
        self._names = [service.name for service in services]
        reflection.enable_server_reflection(
            [*self._names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._server,
        )
        self.port = 0

    def start(self) -> int:
        """Bind, start and report SERVING; returns the bound port (useful when `grpc_port` is 0)."""
        self.port = self._bind(f"{self.settings.host}:{self.settings.grpc_port}")
        self._server.start()
        self.set_serving(True)
        log.info("gRPC listening on %s (services: %s)", self.port, ", ".join(self._names) or "health only")
        return self.port

    def _bind(self, address: str) -> int:
        """Bind `address`, retrying while it is taken (a restarted service racing the process it replaces)."""
        deadline = time.monotonic() + self.settings.bind_retry_s
        delay, warned = 0.1, False
        while True:
            try:
                port = self._add_port(address)
            except RuntimeError:  # grpc raises this when the address is in use or not bindable
                port = 0
            if port:
                return port
            if time.monotonic() + delay > deadline:
                raise OSError(
                    f"server.grpc_port: cannot bind gRPC server to {address} "
                    f"(still taken after {self.settings.bind_retry_s:g}s; see server.bind_retry_s)"
                )
            if not warned:
                log.warning("gRPC address %s is taken; retrying for up to %gs", address, self.settings.bind_retry_s)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _add_port(self, address: str) -> int:
        if self.settings.tls_cert is not None and self.settings.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(self.settings.tls_key.read_bytes(), self.settings.tls_cert.read_bytes())]
            )
            return int(self._server.add_secure_port(address, credentials))
        return int(self._server.add_insecure_port(address))

    def set_serving(self, serving: bool) -> None:
        """Health of every service here: NOT_SERVING while a dependency it needs is down (ignored once stopping)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._names):
            self.health.set(name, status)

    def stop(self) -> None:
        """NOT_SERVING, drain, then stop accepting and wait for in-flight calls (at most `grace_s`)."""
        self.health.enter_graceful_shutdown()
        time.sleep(self.settings.drain_delay_s)
        self._server.stop(self.settings.grace_s).wait()
        log.info("gRPC server stopped")
