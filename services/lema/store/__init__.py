"""Artifact stores behind one interface, chosen by `create_store` from settings."""

from __future__ import annotations

from lema.config import StoreSettings
from lema.store.base import ArtifactStore, StoreError
from lema.store.local import LocalStore

__all__ = ["ArtifactStore", "LocalStore", "StoreError", "create_store"]


def create_store(settings: StoreSettings) -> ArtifactStore:
    if settings.kind == "local":
        return LocalStore(settings.root)
    raise StoreError(f"store.kind: unsupported store {settings.kind!r}")
