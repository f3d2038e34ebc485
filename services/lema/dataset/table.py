"""The dataset table's layout: one append-only table per run, partitioned by `kind`, and where it lives.

Every row is one record of the run (see `lema.stages.dataset.KIND_RECORDS`): the columns are the union of the record
fields of every kind, so each kind reads as a plain table of its own (`WHERE kind = 'cot'`), plus one `batches` row
per commit with the writer's counters. The table is `<run>/table` in the artifact store: a directory for the local
store, `s3://bucket/prefix/<run>/table` on MinIO/S3.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from lema.config import StoreSettings
from lema.stages.dataset import KIND_RECORDS, TableRow
from lema.store.base import StoreError

TABLE_DIR = "table"
BATCHES = "batches"
"""The kind of the rows that count each commit: writer, records, seconds it took, when."""

_STRING = pa.string()
_INT = pa.int64()
COLUMNS: dict[str, pa.DataType] = {
    "kind": _STRING,
    "id": _STRING,
    # questions
    "text": _STRING,
    "gold": _STRING,
    "task": _STRING,
    "choices": pa.list_(_STRING),
    "source": _STRING,
    "parent_id": _STRING,
    "round": _INT,
    "reference_solution": _STRING,
    # paths
    "question_id": _STRING,
    "model": _STRING,
    "sample_index": _INT,
    "prompt_version": _STRING,
    "answer": _STRING,
    "verdict": _STRING,
    "verdict_reason": _STRING,
    # cot and correction examples
    "input": _STRING,
    "output": _STRING,
    "path_id": _STRING,
    "question": _STRING,
    "wrong_solution": _STRING,
    "wrong_answer": _STRING,
    "incorrect_step": _INT,
    "explanation": _STRING,
    "corrected_solution": _STRING,
    "sampler_model": _STRING,
    "corrector_model": _STRING,
    # drops
    "stage": _STRING,
    "reason": _STRING,
    "record_id": _STRING,
    "detail": _STRING,
    # batches
    "writer": _STRING,
    "records": _INT,
    "seconds": pa.float64(),
    "written_at": pa.float64(),
}
SCHEMA = pa.schema([pa.field(name, kind, nullable=name not in ("kind", "id")) for name, kind in COLUMNS.items()])
PARTITION_BY = ["kind"]
FILE_SCHEMA = pa.schema([field for field in SCHEMA if field.name not in PARTITION_BY])
"""The columns stored in the Parquet files (the partition column lives in the directory name)."""


def _check_columns() -> None:
    """Every field of every kind has a column (a new record field must be added to `COLUMNS`), and no field is a
    nested record (`to_arrow` reads field values as column values)."""
    for kind, model in KIND_RECORDS.items():
        missing = set(model.model_fields) - set(COLUMNS)
        if missing:
            raise AssertionError(f"dataset table: no column for {kind} field(s) {sorted(missing)}")
        nested = [name for name, field in model.model_fields.items() if "Record" in str(field.annotation)]
        if nested:
            raise AssertionError(f"dataset table: {kind} field(s) {nested} are records, not column values")


_check_columns()


BATCH_COLUMNS = ("id", "writer", "records", "seconds", "written_at")
"""The columns of a `batches` row (`batch_counters`)."""


def kind_columns(kind: str) -> list[str]:
    """The columns a kind's rows fill (its record fields, plus `id`); every other column of the kind is null."""
    if kind == BATCHES:
        return list(BATCH_COLUMNS)
    return list(dict.fromkeys(["id", *KIND_RECORDS[kind].model_fields]))  # type: ignore[index]


def to_arrow(rows: Sequence[TableRow], batch: dict[str, Any] | None = None) -> dict[str, pa.Table]:
    """The rows as one Arrow table per kind (without the partition column); `batch` adds a counters row."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        # Every kind's record is flat (scalars and a tuple of strings), so its fields are its column values;
        # reading them directly costs a tenth of `model_dump`, which dominated the sink's time per batch.
        by_kind.setdefault(row.kind, []).append({**vars(row.record), "id": row.id})
    if batch is not None:
        by_kind.setdefault(BATCHES, []).append(batch)
    return {kind: pa.Table.from_pylist(items, schema=FILE_SCHEMA) for kind, items in by_kind.items()}


def batch_counters(writer: str, records: int, seconds: float, batch_id: str) -> dict[str, Any]:
    return dict(zip(BATCH_COLUMNS, (batch_id, writer, records, round(seconds, 6), time.time()), strict=True))


@dataclass(frozen=True)
class TableLocation:
    """Where a run's table lives, for delta-rs (uri + storage options) and for writing Parquet files (pyarrow fs)."""

    uri: str
    storage_options: dict[str, str]
    filesystem: pafs.FileSystem
    root: str
    """The table's directory as a path of `filesystem`."""

    @classmethod
    def of(cls, settings: StoreSettings, run: str) -> TableLocation:
        if settings.kind == "local":
            root = (Path(settings.root).resolve() / run / TABLE_DIR).as_posix()
            return cls(root, {}, pafs.LocalFileSystem(), root)
        if not settings.endpoint:
            raise StoreError("store.endpoint: required for store.kind 'minio' (host:port of the S3 server)")
        missing = [name for name in (settings.access_key_env, settings.secret_key_env) if not os.environ.get(name)]
        if missing:
            raise StoreError(f"store: environment variable(s) {', '.join(missing)} must hold the S3 credentials")
        access, secret = os.environ[settings.access_key_env], os.environ[settings.secret_key_env]
        region = settings.region or "us-east-1"
        scheme = "https" if settings.secure else "http"
        key = "/".join(p for p in (settings.prefix.strip("/"), run, TABLE_DIR) if p)
        options = {
            "AWS_ENDPOINT_URL": f"{scheme}://{settings.endpoint}",
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": region,
            "AWS_ALLOW_HTTP": "false" if settings.secure else "true",
            # S3 has no atomic rename: a commit is a conditional PUT (If-None-Match), so concurrent writers that
            # race for the same log version cannot overwrite each other's commit.
            "aws_conditional_put": "etag",
        }
        filesystem = pafs.S3FileSystem(
            access_key=access, secret_key=secret, endpoint_override=settings.endpoint, scheme=scheme, region=region
        )
        return cls(f"s3://{settings.bucket}/{key}", options, filesystem, f"{settings.bucket}/{key}")
