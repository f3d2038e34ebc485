"""Artifact store on MinIO or any S3 server, through the official `minio` client.

Every key lives under `bucket/prefix/`, so runs (or deployments) sharing a bucket never see each other's objects.
S3 writes are atomic per object (a reader sees the old object or the new one), large files go up in multipart parts,
and transient failures (connection errors, HTTP 5xx) are retried with backoff by the client's default pool.
"""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import urllib3
from minio import Minio
from minio.error import S3Error

from lema.config import StoreSettings
from lema.store.base import StoreError

MULTIPART_PART_SIZE = 16 * 1024 * 1024  # objects above this go up in parts of this size
_MISSING = {"NoSuchKey", "NoSuchObject"}


class MinioStore:
    def __init__(self, client: Minio, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        try:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StoreError(f"s3://{bucket}: cannot create bucket: {exc.code}: {exc.message}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"s3://{bucket}: cannot reach the S3 server: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> MinioStore:
        """Credentials come from the environment variables the settings name, never from the config file."""
        if not settings.endpoint:
            raise StoreError("store.endpoint: required for store.kind 'minio' (host:port of the S3 server)")
        missing = [name for name in (settings.access_key_env, settings.secret_key_env) if not os.environ.get(name)]
        if missing:
            raise StoreError(f"store: environment variable(s) {', '.join(missing)} must hold the S3 credentials")
        client = Minio(
            settings.endpoint,
            access_key=os.environ[settings.access_key_env],
            secret_key=os.environ[settings.secret_key_env],
            secure=settings.secure,
            region=settings.region,
        )
        return cls(client, settings.bucket, settings.prefix)

    def _object(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not key or key.startswith("/") or ".." in parts:
            raise StoreError(f"invalid store key {key!r}: must be a relative '/'-separated path without '..'")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, object_name: str) -> str:
        return object_name[len(self.prefix) + 1 :] if self.prefix else object_name

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(
            self.bucket, self._object(key), io.BytesIO(data), len(data), part_size=MULTIPART_PART_SIZE
        )

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, self._object(key))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(f"{self.uri(key)}: no such object") from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, self._object(key))
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        listed = self.client.list_objects(self.bucket, prefix=self._list_prefix(prefix), recursive=True)
        return sorted(k for k in (self._key(o.object_name) for o in listed) if k.startswith(prefix))

    def _list_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._object(key))

    def upload_file(self, key: str, path: Path) -> None:
        self.client.fput_object(self.bucket, self._object(key), str(path), part_size=MULTIPART_PART_SIZE)

    def download_file(self, key: str, path: Path) -> None:
        try:
            self.client.fget_object(self.bucket, self._object(key), str(path))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(f"{self.uri(key)}: no such object") from None
            raise

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"
