"""The `openai` backend against a real HTTP server that injects throttling, server errors, hangs and drops."""

from __future__ import annotations

import asyncio
import logging

import pytest
from llm_testing import FaultyServer, ask

from lema.config import LLMSettings
from lema.llm.base import LLMError, LLMUnavailable
from lema.llm.openai_backend import OpenAIBackend


def backend_for(server: FaultyServer, **overrides: object) -> OpenAIBackend:
    fields: dict[str, object] = {
        "backend": "openai",
        "model": "test-model",
        "base_url": server.url,
        "api_key_env": "LEMA_TEST_OPENAI_KEY",
        "timeout_s": 0.5,
        "retry_window_s": 5,
        "retry_backoff_s": 0.01,
        **overrides,
    }
    return OpenAIBackend(LLMSettings.model_validate(fields))


def test_recovers_from_throttling_server_errors_hangs_and_drops() -> None:
    with FaultyServer(["429", "500", "hang", "drop"], retry_after="0") as server:
        backend = backend_for(server)
        try:
            [[completion]] = backend.generate([ask("2+2?", seed=7)])
        finally:
            backend.close()
    assert completion.text == "seed=7"
    assert server.calls == 5


def test_gives_up_after_the_retry_window_naming_model_and_status() -> None:
    with FaultyServer(["503"] * 1000) as server:
        backend = backend_for(server, retry_window_s=0.3)
        try:
            with pytest.raises(LLMUnavailable, match=r"'test-model'.*HTTP 503.*attempts over 0\.\d s"):
                backend.generate([ask("2+2?")])
        finally:
            backend.close()
    assert 2 <= server.calls < 1000


def test_an_outage_inside_the_window_is_ridden_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lema.llm.openai_backend")
    with FaultyServer(["503", "drop", "500", "503", "drop"] * 4, retry_after="0") as server:
        backend = backend_for(server, max_concurrency=4)
        try:
            completions = backend.generate([ask("2+2?", seed=s) for s in range(4)])
        finally:
            backend.close()
    assert [c.text for [c] in completions] == [f"seed={s}" for s in range(4)]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("retrying for up to 5 s" in line for line in lines) == 1, lines
    assert sum("answers again" in line for line in lines) == 1, lines


def test_timeouts_are_retried_then_reported() -> None:
    with FaultyServer(["hang"] * 30) as server:
        backend = backend_for(server, retry_window_s=0.3, timeout_s=0.2)
        try:
            with pytest.raises(LLMUnavailable, match=r"no answer within 0.2 s, still failing after \d attempts"):
                backend.generate([ask("2+2?")])
        finally:
            backend.close()
    assert 2 <= server.calls <= 4


def test_client_errors_are_not_retried() -> None:
    with FaultyServer(["400"]) as server:
        backend = backend_for(server)
        try:
            with pytest.raises(LLMError, match=r"HTTP 400: injected 400"):
                backend.generate([ask("2+2?")])
        finally:
            backend.close()
    assert server.calls == 1


def test_malformed_answer_is_an_error() -> None:
    with FaultyServer(["garbage"]) as server:
        backend = backend_for(server)
        try:
            with pytest.raises(LLMError, match="malformed chat completion"):
                backend.generate([ask("2+2?")])
        finally:
            backend.close()


def test_retry_after_is_a_floor_on_the_wait() -> None:
    with FaultyServer(["429"], retry_after="0.3") as server:
        backend = backend_for(server)
        try:
            backend.generate([ask("2+2?")])
        finally:
            backend.close()
    first, second = server.call_times
    assert second - first >= 0.3


def test_concurrency_is_limited() -> None:
    with FaultyServer(delay_s=0.05) as server:
        backend = backend_for(server, max_concurrency=3)
        try:
            results = backend.generate([ask(f"question {i}", seed=i, n=2) for i in range(6)])
        finally:
            backend.close()
    assert server.calls == 12
    assert server.max_in_flight == 3
    assert [[c.text for c in samples] for samples in results] == [[f"seed={i}", f"seed={i + 1}"] for i in range(6)]


def test_usage_counts_tokens_from_the_server() -> None:
    with FaultyServer() as server:
        backend = backend_for(server)
        try:
            backend.generate([ask("a", n=3), ask("b")])
        finally:
            backend.close()
    assert backend.usage.requests == 2
    assert backend.usage.prompt_tokens == 2  # one message each, counted once per request
    assert backend.usage.completion_tokens == 4 * 3


def test_api_key_is_sent_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-do-not-leak-0123456789"
    monkeypatch.setenv("LEMA_TEST_OPENAI_KEY", secret)
    with FaultyServer(["401"]) as server:
        backend = backend_for(server)
        try:
            with pytest.raises(LLMError) as failure:
                backend.generate([ask("2+2?")])
            backend.generate([ask("2+2?")])
        finally:
            backend.close()
    assert server.authorizations == [f"Bearer {secret}"] * 2
    assert "HTTP 401" in str(failure.value)
    assert secret not in str(failure.value)
    assert secret not in repr(backend)


def test_no_key_in_the_environment_sends_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEMA_TEST_OPENAI_KEY", raising=False)
    with FaultyServer() as server:
        backend = backend_for(server)
        try:
            backend.generate([ask("2+2?")])
        finally:
            backend.close()
    assert server.authorizations == [None]


def test_generate_works_from_inside_a_running_event_loop() -> None:
    with FaultyServer() as server:
        backend = backend_for(server)

        async def caller() -> str:
            return backend.generate([ask("2+2?", seed=3)])[0][0].text

        try:
            assert asyncio.run(caller()) == "seed=3"
        finally:
            backend.close()


def test_unreachable_server_is_reported() -> None:
    with FaultyServer() as server:
        url = server.url
    backend = OpenAIBackend(
        LLMSettings(backend="openai", model="gone", base_url=url, retry_window_s=0.05, retry_backoff_s=0.01)
    )
    try:
        with pytest.raises(LLMError, match=r"'gone'.*connection failed.*attempts"):
            backend.generate([ask("2+2?")])
    finally:
        backend.close()


def test_time_queued_behind_the_concurrency_cap_is_not_part_of_the_timeout() -> None:
    with FaultyServer(delay_s=0.2) as server:
        backend = backend_for(server, max_concurrency=1, timeout_s=1.0, retry_window_s=0)
        try:
            results = backend.generate([ask(f"question {i}", seed=i) for i in range(10)])  # 2 s in all
        finally:
            backend.close()
    assert server.calls == 10
    assert [samples[0].text for samples in results] == [f"seed={i}" for i in range(10)]
