"""lema's own OpenAI-compatible server over the real SmolLM2, driven by lema's `openai` backend and by plain HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from llm_testing import ask, serving

from lema.config import LLMSettings
from lema.llm.base import LLMError
from lema.llm.openai_backend import OpenAIBackend
from lema.llm.openai_server import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url(smollm2: Any) -> Iterator[str]:
    with serving(create_app(smollm2, max_batch=4)) as url:
        yield url


def client_for(url: str, model: str = "smollm2-135m", **overrides: Any) -> OpenAIBackend:
    return OpenAIBackend(LLMSettings(backend="openai", model=model, base_url=f"{url}/v1", **overrides))


def test_completions_over_http_equal_the_local_backend(smollm2: Any, server_url: str) -> None:
    requests = [
        ask("What is 15 plus 27?", temperature=0.8, top_p=0.9, max_tokens=20, seed=3, n=2),
        ask("Name a prime number.", temperature=0.0, max_tokens=12),
        ask("Count to five.", temperature=0.7, max_tokens=20, seed=9, stop=(",",)),
    ]
    remote = client_for(server_url, max_concurrency=4)
    try:
        over_http = remote.generate(requests)
    finally:
        remote.close()
    assert over_http == smollm2.generate(requests)
    assert remote.usage.requests == 3
    assert remote.usage.completion_tokens == sum(c.completion_tokens for samples in over_http for c in samples)


def test_models_and_health(server_url: str) -> None:
    models = httpx.get(f"{server_url}/v1/models").json()
    assert [entry["id"] for entry in models["data"]] == ["smollm2-135m"]
    assert httpx.get(f"{server_url}/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "smollm2-135m", "messages": []}, "messages"),
        ({"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
        ({"model": "smollm2-135m", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_invalid_requests_are_answered_400_naming_the_field(server_url: str, body: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{server_url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_body_that_is_not_json_is_answered_400(server_url: str) -> None:
    response = httpx.post(f"{server_url}/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_an_unknown_model_is_404_and_not_retried(server_url: str) -> None:
    remote = client_for(server_url, model="gpt-9")
    try:
        with pytest.raises(LLMError, match=r"'gpt-9'.*HTTP 404.*serves 'smollm2-135m'"):
            remote.generate([ask("hi", max_tokens=4)])
    finally:
        remote.close()


LEMA = str(Path(sys.executable).with_name("lema"))


def test_lema_serve_llm_command_serves_a_configured_llm(model_cache: Path, tmp_path: Path) -> None:
    config = tmp_path / "lema.yaml"
    config.write_text(yaml.safe_dump({"llms": {"smollm2": {"model": "smollm2-135m", "cache_dir": str(model_cache)}}}))
    port = _free_port()
    log = tmp_path / "serve-llm.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [LEMA, "serve-llm", "--config", str(config), "--llm", "smollm2", "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_health(f"http://127.0.0.1:{port}", server, log)
        remote = client_for(f"http://127.0.0.1:{port}")
        try:
            [[completion]] = remote.generate([ask("Say hello.", temperature=0.0, max_tokens=6)])
        finally:
            remote.close()
        assert completion.completion_tokens > 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_lema_serve_llm_rejects_an_unknown_llm_name() -> None:
    result = subprocess.run(
        [LEMA, "serve-llm", "--llm", "nope"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "no LLM 'nope'" in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"lema serve-llm exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"lema serve-llm did not become healthy within 120 s:\n{log.read_text()}")
