"""The dataset as an append-only table: the sink both runtimes write, and what users read from it.

`create_sink` picks the table format from `dataset.sink` (Delta Lake); `lema.dataset.reader` reads a run back with
each record once (exports, stats, the training job's `read_examples`).

The table format's modules (pyarrow, deltalake) load on first use, so that the `lema` command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lema.config import LemaSettings, StoreSettings
    from lema.dataset.base import DatasetSink
    from lema.dataset.delta import DatasetSinkError

__all__ = ["DatasetSink", "DatasetSinkError", "create_sink"]


def __getattr__(name: str) -> Any:
    if name == "DatasetSink":
        from lema.dataset.base import DatasetSink

        return DatasetSink
    if name == "DatasetSinkError":
        from lema.dataset.delta import DatasetSinkError

        return DatasetSinkError
    raise AttributeError(f"module 'lema.dataset' has no attribute {name!r}")


def create_sink(
    settings: LemaSettings, writer: str = "lema", store: StoreSettings | None = None, *, create: bool = True
) -> DatasetSink:
    """The run's table in the artifact store (`store`, default `settings.store`); created if missing and `create`,
    else `DatasetSinkError` (readers never create a table)."""
    from lema.dataset.delta import DeltaSink
    from lema.dataset.table import TableLocation
    from lema.store import create_store

    store_settings = store or settings.store
    create_store(store_settings)  # makes sure the bucket (or the root directory) exists
    if settings.dataset.sink == "delta":
        return DeltaSink(TableLocation.of(store_settings, settings.run.name), settings.dataset, writer, create=create)
    raise ValueError(f"dataset.sink: unsupported table format {settings.dataset.sink!r}")
