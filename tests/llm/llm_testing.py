"""Helpers for the LLM tests: requests in one line, and real HTTP servers on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from lema.llm.base import ChatMessage, GenerationRequest
from lema.records import GenerationParams


def ask(question: str, **params: Any) -> GenerationRequest:
    """A one-message chat request; `n` goes to the request, everything else to its GenerationParams."""
    n = params.pop("n", 1)
    return GenerationRequest(messages=(ChatMessage("user", question),), params=GenerationParams(**params), n=n)


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class FaultyServer:
    """A real OpenAI-compatible HTTP server that fails its first calls as scripted, then answers every call.

    Faults, one per call in order: an HTTP status such as "429" (sent with Retry-After when `retry_after` is set),
    "500" or "400"; "401" (whose error message echoes the Authorization header, as a careless server might); "hang"
    (no answer until the server stops); "drop" (the connection closes without an answer); "garbage" (HTTP 200 with a
    body that is not a chat completion). An answer's content is `seed=<seed>`, showing which seed the call carried.
    """

    def __init__(self, faults: Sequence[str] = (), *, delay_s: float = 0.0, retry_after: str | None = None) -> None:
        self.faults = list(faults)
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.calls = 0
        self.call_times: list[float] = []
        self.authorizations: list[str | None] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def begin_call(self, authorization: str | None) -> str:
        with self._lock:
            fault = self.faults[self.calls] if self.calls < len(self.faults) else "ok"
            self.calls += 1
            self.call_times.append(time.monotonic())
            self.authorizations.append(authorization)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return fault

    def end_call(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def hang(self) -> None:
        self._stopping.wait()


def _handler_for(server: FaultyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            authorization = self.headers.get("Authorization")
            fault = server.begin_call(authorization)
            try:
                if fault == "hang":
                    server.hang()
                elif fault == "drop":
                    self.close_connection = True
                elif fault == "garbage":
                    self._reply(200, {"unexpected": True})
                elif fault == "401":
                    self._reply(401, {"error": {"message": f"rejected credentials {authorization}"}})
                elif fault != "ok":
                    self._reply(int(fault), {"error": {"message": f"injected {fault}"}})
                else:
                    time.sleep(server.delay_s)
                    self._reply(200, _completion(body))
            finally:
                server.end_call()

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429 and server.retry_after is not None:
                self.send_header("Retry-After", server.retry_after)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read the server's counters, not its log."""

    return Handler


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"seed={body['seed']}"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": len(body["messages"]),
            "completion_tokens": 3,
            "total_tokens": 3 + len(body["messages"]),
        },
    }
