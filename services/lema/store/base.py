"""The artifact store: run config, prompts, datasets, checkpoints and adapters, addressed by '/'-separated keys."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StoreError(RuntimeError):
    pass


class ArtifactStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: a reader sees the old object or the new one, never a part."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Raise `KeyError` naming the key when it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None: ...

    def upload_file(self, key: str, path: Path) -> None:
        """Stream a (possibly large) local file in; object stores use multipart uploads."""
        ...

    def download_file(self, key: str, path: Path) -> None: ...

    def uri(self, key: str) -> str:
        """A human-readable location for logs and manifests (file:///..., s3://bucket/...)."""
        ...
