"""The dataset sink interface: an append-only table of rows that commits consumed offsets with the rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pyarrow as pa

from lema.stages.dataset import TableRow


class DatasetSink(Protocol):
    def append(self, rows: Sequence[TableRow], offsets: Mapping[str, int] | None = None) -> bool:
        """Append `rows` and `offsets` (source id -> next offset to consume) in one commit; False if the table
        already held those offsets and nothing was written."""
        ...

    def offsets(self, sources: Sequence[str]) -> dict[str, int]:
        """The committed next offset of each of `sources` that the table has one for."""
        ...

    def read(self, kind: str, columns: Sequence[str]) -> pa.Table:
        """Every committed row of `kind` (a redelivered record may appear more than once)."""
        ...

    def version(self) -> int: ...

    def compact(self) -> dict[str, Any]:
        """Merge small files; no data change."""
        ...

    def replace_kind(self, kind: str, table: pa.Table, read_version: int) -> None:
        """Replace the rows of `kind` with `table`, read at `read_version`; refused if `kind` changed since."""
        ...

    def vacuum(self, retention_hours: int) -> list[str]:
        """Delete unreferenced files older than `retention_hours`; returns them."""
        ...
