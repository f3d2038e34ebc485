"""The platform's real infrastructure, started once per session: a Tansu broker and a moto S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_testing import BUS_CLIENTS

from lema.runtime.infra import LocalBroker, LocalS3


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    with LocalBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log") as started:
        yield started


@pytest.fixture(params=BUS_CLIENTS)
def bus_client(request: pytest.FixtureRequest) -> str:
    """Runs a bus-contract test once per Kafka client (`bus.client`)."""
    return str(request.param)


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    with LocalS3() as started:
        yield started


@pytest.fixture
def s3_credentials(s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> LocalS3:
    """The S3 server, with the credentials the minio store reads from the environment set for this test."""
    monkeypatch.setenv("LEMA_S3_ACCESS_KEY", s3.access_key)
    monkeypatch.setenv("LEMA_S3_SECRET_KEY", s3.secret_key)
    return s3


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
