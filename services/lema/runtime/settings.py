"""Settings of a lema service process: the pipeline settings plus how the process serves (`server` section).

Loaded like every lema settings model (`lema.config.load_settings`): YAML file, then `LEMA_SERVER__GRPC_PORT=...`
style environment variables, then `--set server.grpc_port=...` overrides. Secrets never sit in the file: the bearer
token is read from the environment variable `server.token_env` names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lema.config import LemaSettings, Section

SERVICES = ("sampler", "checker", "corrector", "evolver", "dataset-writer")
Service = Literal["sampler", "checker", "corrector", "evolver", "dataset-writer"]


class ServerSettings(Section):
    host: str = Field("0.0.0.0", description="Interface the gRPC and metrics servers listen on.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port (tests).")
    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus /metrics over HTTP; 0 picks a free port.")
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest gRPC message sent or received.")
    max_concurrent_rpcs: int = Field(
        256, gt=0, description="Calls in progress at once (health probes count); more are RESOURCE_EXHAUSTED."
    )
    blocking_threads: int = Field(
        32, gt=0, description="Threads running calls' blocking work (LLM generation, symbolic checks) concurrently."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain; with tls_key, the server speaks TLS.")
    tls_key: Path | None = None
    auth: Literal["none", "token"] = Field("none", description="'token': every call needs 'Bearer <token>'.")
    token_env: str = Field("LEMA_GRPC_TOKEN", description="Environment variable holding the bearer token.")
    drain_delay_s: float = Field(
        1.0, ge=0, description="After SIGTERM, how long health says NOT_SERVING before new calls are refused."
    )
    grace_s: float = Field(30.0, ge=0, description="After that, how long in-flight calls get to finish.")
    bind_retry_s: float = Field(
        15.0, ge=0, description="How long a taken gRPC port is retried before the service gives up."
    )

    @model_validator(mode="after")
    def _tls_needs_both_files(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server.tls_cert and server.tls_key: give both (TLS) or neither (plaintext)")
        return self

    def token(self) -> str | None:
        """The bearer token when auth is on; a missing variable is an error, never silently open."""
        if self.auth == "none":
            return None
        token = os.environ.get(self.token_env, "")
        if not token:
            raise ValueError(f"server.auth is 'token' but the environment variable {self.token_env} is empty")
        return token


class TopicSettings(Section):
    """How a service creates the bus topics that do not exist yet (existing topics are never changed)."""

    partitions: int = Field(4, gt=0, description="Partitions per topic: the most replicas a consumer group can use.")
    replication_factor: int = Field(1, gt=0)


class ServiceSettings(LemaSettings):
    server: ServerSettings = ServerSettings()
    topics: TopicSettings = TopicSettings()
