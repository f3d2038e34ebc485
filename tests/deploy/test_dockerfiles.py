"""The Dockerfiles, read without a Docker engine: hadolint, pinned bases, non-root final stages, a tight context.

And the image's health check, run against a real gRPC server with the standard health service.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from deploy_testing import REPO
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

DOCKERFILES = sorted((REPO / "docker").glob("*Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|nvcc)\b")


def stages(dockerfile: Path) -> list[list[str]]:
    """The instructions of each build stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    out: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def base_image(stage: list[str]) -> str:
    return stage[0].split()[1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    linted = subprocess.run(
        [HADOLINT, "--format", "json", "--failure-threshold", "style", dockerfile],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    findings = [f"{f['file']}:{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in json.loads(linted.stdout)]
    assert not findings, "\n".join(findings)
    assert linted.returncode == 0, linted.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_to_exact_versions(dockerfile: Path) -> None:
    images = [base_image(stage) for stage in stages(dockerfile)]
    images += re.findall(r"COPY --from=(\S+/\S+:\S+)", dockerfile.read_text())
    for image in images:
        tag = image.rpartition(":")[2]
        assert "@sha256:" in image or re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile.name}: {image} is not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_final_stage_runs_non_root_without_compilers(dockerfile: Path) -> None:
    build_stages = stages(dockerfile)
    assert len(build_stages) >= 2, f"{dockerfile.name}: not multi-stage"
    final = build_stages[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile.name}: final stage runs as root"
    assert users[-1].split(":")[0].isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"
    assert "devel" not in base_image(final), f"{dockerfile.name}: final stage on a toolchain image"
    installs = [i for i in final if i.upper().startswith("RUN ") and ("apt-get install" in i or "pip install" in i)]
    assert not installs, f"{dockerfile.name}: the final stage installs packages: {installs}"
    assert not [i for i in final if COMPILERS.search(i)], f"{dockerfile.name}: compilers in the final stage"


def test_the_build_context_holds_what_the_dockerfiles_copy_and_nothing_else() -> None:
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "**", "the context is an allow-list"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    copied = {
        source
        for dockerfile in DOCKERFILES
        for instruction in (i for stage in stages(dockerfile) for i in stage)
        if instruction.upper().startswith("COPY ") and "--from=" not in instruction
        for source in [arg for arg in instruction.split()[1:-1] if not arg.startswith("--")]
    }
    for source in copied:
        path = source.rstrip("/").removeprefix("./")
        assert (REPO / path).exists(), f"COPY {source}: not in the repository"
        assert any(path == a or path.startswith(f"{a}/") for a in allowed), f"COPY {source}: excluded by .dockerignore"
    for local_state in (".venv", "runs", ".git", "tests"):
        assert not any(local_state == a or local_state.startswith(f"{a}/") for a in allowed), local_state


@pytest.fixture(scope="module")
def health_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grpc_health_check", REPO / "docker" / "grpc_health_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_health_check_passes_only_while_the_server_is_serving(
    health_check: ModuleType, health_server: tuple[str, health.HealthServicer]
) -> None:
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert health_check.check(target)
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert not health_check.check(target)
    assert not health_check.check(target, "lema.v1.NoSuchService")


def test_health_check_fails_when_nothing_listens(health_check: ModuleType) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not health_check.check(f"127.0.0.1:{port}", timeout_s=1.0)
