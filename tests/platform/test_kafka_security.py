"""Kafka security settings (`bus.security_protocol`, SASL, TLS) reach every kafka-python and librdkafka client;
secrets come from the environment variables the settings name and never appear in an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from lema.bus.kafka import client_options
from lema.bus.rdkafka import rdkafka_options
from lema.config import BusSettings, ConfigError, LemaSettings, load_settings


def test_plaintext_by_default() -> None:
    assert client_options(BusSettings(bootstrap_servers="b:9092")) == {
        "bootstrap_servers": "b:9092",
        "security_protocol": "PLAINTEXT",
    }


def sasl_ssl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LemaSettings:
    monkeypatch.setenv("APP_KAFKA_USER", "svc-lema")
    monkeypatch.setenv("APP_KAFKA_PASS", "pa55word")
    config = tmp_path / "bus.yaml"
    config.write_text(
        "bus:\n  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n"
        "  sasl_username_env: APP_KAFKA_USER\n  sasl_password_env: APP_KAFKA_PASS\n  ssl_cafile: /etc/ca.pem\n"
    )
    return load_settings(config, ["bus.ssl_certfile=/etc/client.pem", "bus.ssl_keyfile=/etc/client.key"])


def test_sasl_ssl_reads_credentials_from_the_named_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = client_options(sasl_ssl(tmp_path, monkeypatch).bus)
    assert options == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc-lema",
        "sasl_plain_password": "pa55word",
        "ssl_cafile": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
    }
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):  # each one's own option names
        assert set(options) <= set(client.DEFAULT_CONFIG), client


def test_librdkafka_gets_the_same_settings_in_its_own_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = rdkafka_options(sasl_ssl(tmp_path, monkeypatch).bus)
    assert options.pop("logger") is not None
    assert options == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-lema",
        "sasl.password": "pa55word",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/client.pem",
        "ssl.key.location": "/etc/client.key",
    }
    # librdkafka knows every name (it refuses unknown ones); without TLS files to read, clients build offline.
    sasl = {name: value for name, value in options.items() if not name.startswith("ssl.")}
    Producer(sasl | {"security.protocol": "SASL_PLAINTEXT"}).close()
    Consumer(sasl | {"security.protocol": "SASL_PLAINTEXT", "group.id": "g"}).close()


def test_a_missing_credential_variable_is_named_without_any_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEMA_KAFKA_USERNAME", "svc-lema")
    monkeypatch.delenv("LEMA_KAFKA_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="LEMA_KAFKA_PASSWORD") as raised:
        client_options(BusSettings(security_protocol="SASL_PLAINTEXT"))
    assert "svc-lema" not in str(raised.value)


def test_an_unknown_protocol_is_refused_at_load_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="security_protocol"):
        load_settings(None, ["bus.security_protocol=TLS"])
