"""The gRPC server every lema service runs: a `grpc.aio` server with health, reflection, metrics, optional TLS and
bearer-token auth, on its own event-loop thread so the thread-based service process drives it with plain calls.

Calls are coroutines on the loop; their blocking work (LLM generation, symbolic checks) runs on a bounded pool of
`blocking_threads` threads (`BlockingPool`), so concurrent calls reach a batching backend together while the loop
keeps answering. At most `max_concurrent_rpcs` calls are in progress; more are RESOURCE_EXHAUSTED.

Lifecycle: `start()` binds the port (retrying for `bind_retry_s` while it is taken, e.g. by the process this one
replaces) and reports SERVING; `set_serving(False)` reports NOT_SERVING while a dependency the service needs is down;
`stop()` (called on SIGTERM) reports NOT_SERVING so load balancers and Kubernetes stop routing here, waits
`drain_delay_s` while still answering, then refuses new calls and gives in-flight calls up to `grace_s` to finish.
Request bytes that do not decode as the method's message are INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import Counter, Histogram

from lema.runtime import metrics
from lema.runtime.settings import ServerSettings

log = logging.getLogger(__name__)

# Probes and tooling work without a token: Kubernetes' gRPC probe cannot send one.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Any]
T = TypeVar("T")


class _NotStarted(Exception):
    """The call's deadline passed while its work waited for a thread."""


class BlockingPool:
    """The bounded threads that run calls' blocking work, so the event loop never waits on it.

    Work whose call's deadline passed while it waited for a thread is not started: the call is DEADLINE_EXCEEDED.
    """

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc-blocking")

    async def run(self, context: Context, work: Callable[..., T], *args: Any) -> T:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def start() -> T:
            if deadline is not None and time.monotonic() >= deadline:
                raise _NotStarted
            return work(*args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, start)
        except _NotStarted:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while the call waited; its work was not started"
            )
            raise  # abort raises; this line only tells the type checker

    def close(self) -> None:
        """Drop queued work; work already running finishes on its own (stop() gave it `grace_s`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes did not decode, so the behaviour can answer INVALID_ARGUMENT."""

    error: str


@dataclass(frozen=True)
class _Method:
    """What wrapping one method needs: its full name, its labels, and the bearer token it demands (None: open)."""

    path: str
    service: str
    name: str
    expected_token: bytes | None
    metrics: dict[str, tuple[Counter, Histogram]] = field(default_factory=dict, compare=False)

    async def admit(self, request: Any, context: Context, streams_request: bool) -> Any:
        """The request, once the caller is authenticated and its bytes decoded; else the call is aborted."""
        if self.expected_token is not None:
            presented = dict(context.invocation_metadata() or ()).get("authorization", "")
            if not hmac.compare_digest(str(presented).encode(), self.expected_token):
                reason = "missing" if not presented else "invalid"
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, f"{reason} bearer token in 'authorization' metadata"
                )
        if streams_request:
            return self._admit_each(request, context)
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        return request

    async def _admit_each(self, requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            yield request

    def record(self, context: Context, exc: BaseException | None, started: float) -> None:
        code = _code_name(context, exc)
        children = self.metrics.get(code)
        if children is None:  # looking labels up costs more than counting: once per method and code
            labels = (self.service, self.name, code)
            children = self.metrics[code] = (metrics.RPC_REQUESTS.labels(*labels), metrics.RPC_DURATION.labels(*labels))
        requests, duration = children
        requests.inc()
        duration.observe(time.perf_counter() - started)


def _code_name(context: Context, exc: BaseException | None) -> str:
    code = context.code()
    if code is None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            code = grpc.StatusCode.DEADLINE_EXCEEDED  # the client has its answer; the work finished too late
        elif isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
    return str(code.name)


def _wrapped_behavior(behavior: Behavior, method: _Method, streams_request: bool) -> Behavior:
    """`behavior` of the same kind (a coroutine or async-generator function: grpc.aio tells them apart by that) that
    admits the request first and counts and times the call."""
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for response in behavior(await method.admit(request, context, streams_request), context):
                    yield response
            except BaseException as exc:
                method.record(context, exc, started)
                raise
            method.record(context, None, started)

        return streaming

    async def coroutine(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        try:
            response = await behavior(await method.admit(request, context, streams_request), context)
        except BaseException as exc:
            method.record(context, exc, started)
            raise
        method.record(context, None, started)
        return response

    return coroutine


def _wrapped(handler: grpc.RpcMethodHandler, method: _Method) -> grpc.RpcMethodHandler:
    """`handler`, keeping its kind, with auth, metrics and a request decoder that turns bad bytes into INVALID_ARGUMENT
    rather than the server's INTERNAL."""
    decode, encode = handler.request_deserializer, handler.response_serializer
    if decode is not None:
        strict = decode

        def decode(data: bytes) -> Any:
            try:
                return strict(data)
            except Exception as exc:  # protobuf raises DecodeError, but any decoder failure means bad bytes
                return _Undecodable(f"request bytes do not decode as {method.path}'s message: {exc}")

    streams_request = bool(handler.stream_unary or handler.stream_stream)
    if handler.unary_unary:
        behavior = _wrapped_behavior(handler.unary_unary, method, streams_request)
        return grpc.unary_unary_rpc_method_handler(behavior, decode, encode)
    if handler.unary_stream:
        behavior = _wrapped_behavior(handler.unary_stream, method, streams_request)
        return grpc.unary_stream_rpc_method_handler(behavior, decode, encode)
    if handler.stream_unary:
        behavior = _wrapped_behavior(handler.stream_unary, method, streams_request)
        return grpc.stream_unary_rpc_method_handler(behavior, decode, encode)
    behavior = _wrapped_behavior(handler.stream_stream, method, streams_request)
    return grpc.stream_stream_rpc_method_handler(behavior, decode, encode)


class Registry:
    """Stands in for the server while services register: each method handler is wrapped once, here, so that a call
    pays for one wrapper (auth, decoding, metrics) instead of a chain of per-call interceptors."""

    def __init__(self, server: grpc.aio.Server, token: str | None) -> None:
        self._server = server
        self._expected = None if token is None else f"Bearer {token}".encode()

    def _method(self, path: str) -> _Method:
        service, _, name = path.lstrip("/").rpartition("/")
        expected = None if path.startswith(UNAUTHENTICATED_PREFIXES) else self._expected
        return _Method(path, service, name, expected)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: _wrapped(handler, self._method(f"/{service}/{name}")) for name, handler in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(handler, self._method) for handler in handlers))


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose method handlers are wrapped on first use (unknown methods are not remembered)."""

    def __init__(self, inner: grpc.GenericRpcHandler, method: Callable[[str], _Method]) -> None:
        self._inner, self._method = inner, method
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            handler = self._inner.service(details)
            if handler is None:
                return None
            wrapped = self._wrapped[details.method] = _wrapped(handler, self._method(details.method))
        return wrapped


@dataclass(frozen=True)
class ServiceBinding:
    """A service's full proto name and how to add its servicer (doing blocking work on the pool) to a server."""

    name: str
    register: Callable[[Registry, BlockingPool], None]


class GrpcServer:
    """The service's gRPC server, driven from ordinary threads (never from its own loop's): every method blocks until
    the loop has done it."""

    def __init__(self, settings: ServerSettings, services: Sequence[ServiceBinding]) -> None:
        self.settings = settings
        token = settings.token()
        self._names = [service.name for service in services]
        self._stopped = False
        self._stopping = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        self.blocking = BlockingPool(settings.blocking_threads)
        self.health = health.aio.HealthServicer()
        self._server = self._on_loop(self._build(token, services))
        self.port = 0

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _build(self, token: str | None, services: Sequence[ServiceBinding]) -> grpc.aio.Server:
        """The server, made on the loop that will run it."""
        server = grpc.aio.server(
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", self.settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        registry = Registry(server, token)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        for service in services:
            service.register(registry, self.blocking)
        names = [*self._names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), registry)
        return server

    def start(self) -> int:
        """Bind, start and report SERVING; returns the bound port (useful when `grpc_port` is 0)."""
        try:
            self.port = self._on_loop(self._bind(f"{self.settings.host}:{self.settings.grpc_port}"))
        except OSError:
            self._close_loop()
            raise
        self._on_loop(self._server.start())
        self.set_serving(True)
        log.info("gRPC listening on %s (services: %s)", self.port, ", ".join(self._names) or "health only")
        return self.port

    async def _bind(self, address: str) -> int:
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
            await asyncio.sleep(delay)
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
        with self._stopping:
            if not self._stopped:
                self._on_loop(self._set_all(status))

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self._names):
            await self.health.set(name, status)

    def stop(self) -> None:
        """NOT_SERVING, drain, then stop accepting and wait for in-flight calls (at most `grace_s`)."""
        with self._stopping:
            self._stopped = True
        self._on_loop(self._drain_and_stop())
        self.blocking.close()
        self._close_loop()
        log.info("gRPC server stopped")

    async def _drain_and_stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.settings.drain_delay_s)
        await self._server.stop(self.settings.grace_s)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
