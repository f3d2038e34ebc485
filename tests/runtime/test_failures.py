"""The error policy: which failures are waited out (transient) and which dead-letter (permanent), and how an
outage is reported: once per change, on the gauge and to health listeners."""

from __future__ import annotations

import logging
import threading

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError, UnknownProducerIdError
from prometheus_client import REGISTRY

from lema.bus.kafka import BusError
from lema.llm.base import LLMError, LLMUnavailable
from lema.runtime.failures import Backoff, Dependencies, Interrupted, Transient, classify, retry_transient
from lema.runtime.infra import free_port
from lema.runtime.wire import WireError
from lema.store.base import StoreError
from lema.store.minio import MinioStore


def wrapped(cause: Exception, outer: Exception) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:
        return exc


def test_unavailable_dependencies_are_transient() -> None:
    assert classify(KafkaConnectionError("down")) == Transient("broker", "KafkaConnectionError: down")
    assert classify(KafkaTimeoutError("Unable to bootstrap")).dependency == "broker"  # type: ignore[union-attr]
    invalidated = wrapped(UnknownProducerIdError(), BusError("kafka: a message was not acknowledged"))
    assert classify(invalidated).dependency == "broker"  # type: ignore[union-attr]
    assert classify(LLMUnavailable("model 'm': HTTP 503")).dependency == "llm"  # type: ignore[union-attr]
    assert classify(ConnectionRefusedError()).dependency == "network"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "error",
    [
        KafkaError(KafkaError._TRANSPORT),  # librdkafka: the broker connection failed
        KafkaError(KafkaError._MSG_TIMED_OUT),  # not acknowledged within the delivery timeout
        KafkaError(KafkaError.NOT_COORDINATOR),
        KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True),  # an invalidated idempotent producer
        KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True),
    ],
    ids=str,
)
def test_librdkafka_outages_and_invalidated_clients_are_transient(error: KafkaError) -> None:
    failure = classify(wrapped(KafkaException(error), BusError("kafka: not acknowledged")))
    assert failure is not None and failure.dependency == "broker"


def test_librdkafka_errors_about_the_message_are_permanent() -> None:
    assert classify(wrapped(KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), BusError("too large"))) is None
    assert classify(KafkaException(KafkaError(KafkaError.INVALID_RECORD))) is None


def test_an_unreachable_s3_server_is_a_transient_store_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from minio import Minio

    client = Minio(f"127.0.0.1:{free_port()}", "key", "secret", secure=False)
    with pytest.raises(StoreError) as raised:
        MinioStore(client, "bucket")
    failure = classify(raised.value)
    assert failure is not None and failure.dependency == "store"


def test_bad_input_and_deterministic_errors_are_permanent() -> None:
    for exc in (
        WireError("not an envelope"),
        ValueError("bad field"),
        LLMError("no recorded completion"),
        wrapped(MessageSizeTooLargeError(), BusError("kafka: too large")),
    ):
        assert classify(exc) is None, exc


def test_an_outage_is_reported_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lema.runtime.failures")
    dependencies = Dependencies("svc")
    changes: list[bool] = []
    dependencies.on_change(changes.append)
    for _ in range(3):
        dependencies.down(Transient("store", "refused"))
    assert REGISTRY.get_sample_value("lema_dependency_up", {"dependency": "store"}) == 0
    dependencies.down(Transient("broker", "refused"))
    dependencies.up("store")
    assert not dependencies.all_up and changes == [False]
    dependencies.up("broker")
    dependencies.up("broker")
    assert dependencies.all_up and changes == [False, True]
    assert REGISTRY.get_sample_value("lema_dependency_up", {"dependency": "store"}) == 1
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "svc: store unavailable (refused); pausing and retrying until it is back",
        "svc: broker unavailable (refused); pausing and retrying until it is back",
        "svc: store is back; resuming",
        "svc: broker is back; resuming",
    ]


def test_retry_transient_waits_out_transient_failures_and_raises_permanent_ones() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KafkaConnectionError("down")
        return "done"

    dependencies = Dependencies("svc")
    assert retry_transient(flaky, dependencies, threading.Event(), Backoff(0.001, 0.01)) == "done"
    assert len(calls) == 3 and dependencies.all_up
    with pytest.raises(ValueError, match="bad"):
        retry_transient(lambda: (_ for _ in ()).throw(ValueError("bad")), dependencies, threading.Event())


def test_a_stop_while_waiting_interrupts_without_finishing() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()

    def down() -> None:
        raise KafkaConnectionError("down")

    with pytest.raises(Interrupted, match="broker"):
        retry_transient(down, Dependencies("svc"), stop, Backoff(0.05, 0.05))


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    backoff = Backoff(1.0, 4.0)
    delays = [backoff.next_delay() for _ in range(5)]
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 1.0
