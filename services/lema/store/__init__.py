"""Artifact stores behind one interface, chosen by `create_store` from settings."""

from __future__ import annotations

from lema.config import StoreSettings
from lema.store.base import ArtifactStore, StoreError
from lema.store.local import LocalStore

__all__ = ["ArtifactStore", "LocalStore", "StoreError", "create_store"]


def create_store(settings: StoreSettings) -> ArtifactStore:
    if settings.kind == "local":
        return LocalStore(settings.root)
    if settings.kind == "minio":
        from lema.store.minio import MinioStore  # the minio client is an optional dependency (platform extra)

        return MinioStore.from_settings(settings)
    raise StoreError(f"store.kind: unsupported store {settings.kind!r}")
