"""The MinIO artifact store against a real S3 server (moto), always through the minio client."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import urllib3
from minio import Minio

from lema.config import StoreSettings
from lema.runtime.infra import LocalS3, free_port
from lema.store import StoreError, create_store
from lema.store import minio as minio_store
from lema.store.minio import MinioStore

_buckets = itertools.count()


@pytest.fixture
def settings(s3_credentials: LocalS3) -> StoreSettings:
    return StoreSettings(kind="minio", endpoint=s3_credentials.endpoint, bucket=f"store-{next(_buckets)}")


def test_round_trip_list_and_delete(settings: StoreSettings) -> None:
    store = create_store(settings)
    assert isinstance(store, MinioStore)
    store.put_bytes("run/cot.jsonl", b'{"id": 1}\n')
    store.put_bytes("run/shards/a.jsonl", b"a")
    store.put_bytes("other/x", b"x")
    assert store.get_bytes("run/cot.jsonl") == b'{"id": 1}\n'
    assert store.exists("run/cot.jsonl") and not store.exists("run/missing")
    assert store.list("run/") == ["run/cot.jsonl", "run/shards/a.jsonl"]
    assert store.list() == ["other/x", "run/cot.jsonl", "run/shards/a.jsonl"]
    store.put_bytes("run/cot.jsonl", b"replaced")
    assert store.get_bytes("run/cot.jsonl") == b"replaced"
    store.delete("run/cot.jsonl")
    assert store.list("run/") == ["run/shards/a.jsonl"]
    assert store.uri("run/x") == f"s3://{settings.bucket}/run/x"


def test_missing_objects_raise_key_error_naming_the_uri(settings: StoreSettings, tmp_path: Path) -> None:
    store = create_store(settings)
    with pytest.raises(KeyError, match=f"s3://{settings.bucket}/nope: no such object"):
        store.get_bytes("nope")
    with pytest.raises(KeyError, match="no such object"):
        store.download_file("nope", tmp_path / "nope")


def test_prefixes_keep_runs_apart(settings: StoreSettings) -> None:
    first = create_store(settings.model_copy(update={"prefix": "team-a/"}))
    second = create_store(settings.model_copy(update={"prefix": "team-b"}))
    first.put_bytes("run/cot.jsonl", b"a")
    second.put_bytes("run/cot.jsonl", b"b")
    assert first.get_bytes("run/cot.jsonl") == b"a" and second.get_bytes("run/cot.jsonl") == b"b"
    assert first.list() == ["run/cot.jsonl"]
    assert first.uri("run/cot.jsonl") == f"s3://{settings.bucket}/team-a/run/cot.jsonl"


def test_large_files_go_up_in_parts(settings: StoreSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minio_store, "MULTIPART_PART_SIZE", 5 * 1024 * 1024)  # S3's minimum part size
    store = create_store(settings)
    assert isinstance(store, MinioStore)
    source = tmp_path / "adapter.safetensors"
    source.write_bytes(os.urandom(11 * 1024 * 1024))  # three parts
    store.upload_file("run/adapter/adapter.safetensors", source)
    stat = store.client.stat_object(settings.bucket, "run/adapter/adapter.safetensors")
    assert stat.etag.endswith("-3"), f"expected a 3-part multipart upload, got etag {stat.etag}"
    target = tmp_path / "back" / "adapter.safetensors"
    store.download_file("run/adapter/adapter.safetensors", target)
    assert target.read_bytes() == source.read_bytes()


def test_bad_keys_are_refused(settings: StoreSettings) -> None:
    store = create_store(settings)
    for key in ("", "/abs", "run/../escape"):
        with pytest.raises(StoreError, match="invalid store key"):
            store.put_bytes(key, b"x")


def test_configuration_errors_name_the_setting(s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEMA_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("LEMA_S3_SECRET_KEY", raising=False)
    with pytest.raises(StoreError, match=r"store\.endpoint: required"):
        create_store(StoreSettings(kind="minio"))
    with pytest.raises(StoreError, match="LEMA_S3_ACCESS_KEY, LEMA_S3_SECRET_KEY"):
        create_store(StoreSettings(kind="minio", endpoint=s3.endpoint))


def test_an_unreachable_server_is_a_clear_error() -> None:
    no_retries = urllib3.PoolManager(retries=urllib3.Retry(total=0))  # fail at once instead of backing off
    client = Minio(f"127.0.0.1:{free_port()}", access_key="a", secret_key="b", secure=False, http_client=no_retries)
    with pytest.raises(StoreError, match="cannot reach the S3 server"):
        MinioStore(client, "bucket")
