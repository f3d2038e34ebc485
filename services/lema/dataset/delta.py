"""The Delta Lake dataset sink (delta-rs): every append is one table commit, with the Kafka offsets it consumed.

Cost per append is flat: the rows become one Parquet file per kind, uploaded once, then a commit that adds them
(no rewrite of anything written before). delta-rs replays every commit since the last checkpoint on each update and
commit, so a checkpoint every `dataset.checkpoint_interval` commits bounds both that and what a (re)start reads;
the expired-log cleanup that lists the whole log is left to `vacuum`. Offsets travel in the same commit as
app transactions (`appId` = consumer group/topic/partition, `version` = the next offset to consume), the
kafka-delta-ingest pattern: the table holds exactly the records up to the offsets it states. Each app id is looked up
in the table once (delta-rs replays the log for every lookup) and then followed through the commits that arrive,
read one by one. A writer that lost its partitions but still commits (a zombie) is refused by the log's conflict
check on those app ids.

Every append adds a file per kind, and delta-rs keeps (and replays into each snapshot and checkpoint) the list of live
files, so every `dataset.compact_every_commits` commits the writer merges the small files of the kinds it appended to
(`compact`): files under `COMPACT_TARGET_BYTES`, smallest first, into files of at most that size, a file joining only
files that add up to at least its size (size tiers, as in an LSM tree). A merged file is merged again only once as
much new data has come, so a row is rewritten at most log2(target / data per compaction) times, and a compaction
reads the files written since the last one and rarely more, however long the run. It changes no row (its removes and
adds carry `dataChange: false`) and commits with the app transaction `COMPACTION_APP`: appends never conflict with
it, and when two replicas compact at once the second commit is refused by the log's conflict check, so that replica
leaves the work to the first (delta-rs's own `optimize` would commit both, and every row of the files both merged
would be there twice).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from lema.config import DatasetSettings
from lema.dataset.table import (
    BATCHES,
    FILE_SCHEMA,
    PARTITION_BY,
    SCHEMA,
    TableLocation,
    batch_counters,
    kind_columns,
    to_arrow,
)
from lema.stages.dataset import TableRow

log = logging.getLogger(__name__)

UPLOADS = 8
"""Files of one commit uploaded at once (one per kind): a batch costs one store round trip, not one per kind."""

RETRY_BACKOFF_S = (0.5, 10.0)
"""First and longest wait between tries of a commit the store refused."""

COMPACT_TARGET_BYTES = 16 * 2**20
"""Files compaction merges are smaller than this, and it merges them into files of at most this size: it bounds what
one compaction rewrites; readers get files large enough to scan fast."""
COMPACT_ROW_GROUP = 65_536
"""Rows a merged file's row group holds: what compaction holds in memory at most, besides one input file."""
COMPACTION_APP = "lema-compaction"
"""The app transaction every compaction commits, so that two concurrent compactions conflict."""
POST_COMMIT = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)
"""Checkpoint every `dataset.checkpoint_interval` commits, but leave the expired-log clean-up, which lists the whole
log, to `vacuum`."""
TOMBSTONE_RETENTION = "interval 1 hours"
"""How long a checkpoint keeps the removal of a file compaction replaced (`delta.deletedFileRetentionDuration`, a week
by default): every checkpoint rewrites them all, so a week of compactions would make each checkpoint grow with the
run. `vacuum` lists the store for unreferenced files, so it finds replaced files whose removal is no longer kept."""


class DatasetSinkError(RuntimeError):
    """The table could not be written (after retrying for `dataset.commit_retry_s`) or read."""


class DeltaSink:
    def __init__(
        self, location: TableLocation, settings: DatasetSettings, writer: str = "lema", *, create: bool = True
    ) -> None:
        """`writer` names this process in the per-commit counters; `create=False` opens an existing table only."""
        self.location = location
        self.settings = settings
        self.writer = writer
        self._lock = threading.Lock()  # the poll thread asks for offsets while a batch commits on another
        self._table = self._open_or_create() if create else self._open()
        self._uploads = ThreadPoolExecutor(UPLOADS, thread_name_prefix="dataset-upload")
        self._seen = self._table.version()
        self._held: dict[str, int | None] = {}
        """Each app id looked up so far -> its version in the table as of commit `_seen` (None: not in the table)."""
        self._commits = 0
        self._appended: set[str] = set()
        """The kinds this writer appended to since its last compaction."""

    # -- opening -------------------------------------------------------------------------------------------------
    def _open(self) -> DeltaTable:
        try:
            return DeltaTable(self.location.uri, storage_options=self.location.storage_options)
        except TableNotFoundError:
            raise DatasetSinkError(f"{self.location.uri}: no dataset table (has the run written anything?)") from None

    def _open_or_create(self) -> DeltaTable:
        options = self.location.storage_options
        for _ in range(3):  # replicas starting together race to create it; the losers open the winner's table
            try:
                return DeltaTable(self.location.uri, storage_options=options)
            except TableNotFoundError:
                pass
            try:
                return DeltaTable.create(
                    self.location.uri,
                    schema=SCHEMA,
                    mode="ignore",
                    partition_by=PARTITION_BY,
                    name="lema_dataset",
                    configuration={
                        "delta.checkpointInterval": str(self.settings.checkpoint_interval),
                        "delta.deletedFileRetentionDuration": TOMBSTONE_RETENTION,
                    },
                    storage_options=options,
                )
            except (CommitFailedError, DeltaError) as exc:
                log.info("dataset table %s: created concurrently (%s); opening it", self.location.uri, exc)
        return DeltaTable(self.location.uri, storage_options=options)

    # -- writing -------------------------------------------------------------------------------------------------
    def append(self, rows: Sequence[TableRow], offsets: Mapping[str, int] | None = None) -> bool:
        """Append `rows` and, in the same commit, `offsets` (source id -> next offset to consume).

        Returns False when the table already holds these offsets (a redelivered batch: nothing is written). A store
        that refuses the commit is retried with backoff for `dataset.commit_retry_s`, then `DatasetSinkError`.
        """
        offsets = dict(offsets or {})
        started = time.perf_counter()
        batch_id = f"b-{uuid.uuid4().hex}"
        tables = to_arrow(rows)
        with self._lock:
            deadline = time.monotonic() + self.settings.commit_retry_s
            wait = RETRY_BACKOFF_S[0]
            while True:
                try:
                    held = self._follow(offsets)
                    if offsets and all(held.get(app, -1) >= version for app, version in offsets.items()):
                        log.info("dataset: offsets %s already in the table; batch skipped", offsets)
                        return False
                    counters = batch_counters(self.writer, len(rows), time.perf_counter() - started, batch_id)
                    self._commit({**tables, **to_arrow((), counters)}, offsets, held)
                    break
                except CommitFailedError as exc:
                    # Another writer committed these partitions' offsets since our snapshot: re-read and decide
                    # again (skip what is in; a partial overlap is appended and deduplicated on read).
                    log.warning("dataset: commit conflict, re-reading the table's offsets: %s", exc)
                    if time.monotonic() > deadline:
                        raise DatasetSinkError(f"{self.location.uri}: commit keeps conflicting: {exc}") from exc
                except (OSError, DeltaError) as exc:
                    if time.monotonic() > deadline:
                        raise DatasetSinkError(f"{self.location.uri}: cannot commit: {exc}") from exc
                    log.warning("dataset: store unavailable (%s); retrying in %.1fs", exc, wait)
                    time.sleep(wait)
                    wait = min(wait * 2, RETRY_BACKOFF_S[1])
            self._appended.update([*tables, BATCHES])
            self._commits += 1
            every = self.settings.compact_every_commits
            if every and self._commits % every == 0:
                self._scheduled_compaction()
            return True

    def _scheduled_compaction(self) -> None:
        """Compact the kinds appended since the last time; the batch is committed already, so nothing that goes
        wrong here fails it (the next scheduled compaction tries again)."""
        kinds, self._appended = sorted(self._appended), set()
        started = time.perf_counter()
        try:
            metrics = self._compact(kinds)
        except CommitFailedError as exc:
            log.info("dataset: another writer rewrote these files first (compaction, deduplication): %s", exc)
            return
        except (OSError, DeltaError) as exc:
            log.warning("dataset: compaction failed (%s); the next scheduled one tries again", exc)
            self._appended.update(kinds)
            return
        log.info(
            "dataset: compacted %s: %s files into %s in %.2fs",
            ",".join(kinds),
            metrics["numFilesRemoved"],
            metrics["numFilesAdded"],
            time.perf_counter() - started,
        )

    def _follow(self, apps: Iterable[str]) -> dict[str, int]:
        """Bring the table up to its newest commit (others' commits: keeps our conflict checks short) and return the
        version the table holds for each of `apps` that it has.

        Per call this reads only the commits since the last call, never the log before them: an app id is looked up
        once, then its version is followed through each new commit's transaction actions.
        """
        self._table.update_incremental()
        latest = self._table.version()
        if self._held:
            for version in range(self._seen + 1, latest + 1):
                for app, committed in self._transactions(version):
                    if app in self._held:
                        self._held[app] = committed
        self._seen = latest
        found = {}
        for app in apps:
            if app not in self._held:
                self._held[app] = self._table.transaction_version(app)
            offset = self._held[app]
            if offset is not None:
                found[app] = offset
        return found

    def _transactions(self, version: int) -> Iterator[tuple[str, int]]:
        """The (app id, version) transaction actions of one commit of the log."""
        path = f"{self.location.root}/_delta_log/{version:020d}.json"
        with self.location.filesystem.open_input_stream(path) as commit:
            lines = commit.read().splitlines()
        for line in lines:
            if b'"txn"' in line:
                action = json.loads(line)
                if "txn" in action:
                    yield action["txn"]["appId"], action["txn"]["version"]

    def _commit(self, tables: Mapping[str, pa.Table], offsets: Mapping[str, int], held: Mapping[str, int]) -> None:
        adds: list[AddAction | RemoveAction] = list(self._uploads.map(self._write_file, tables, tables.values()))
        # Never move a partition's offset back: a writer that re-read part of a batch appends it again (duplicates
        # are removed on read), but keeps the furthest offset.
        versions = {app: max(version, held.get(app, -1)) for app, version in offsets.items()}
        try:
            self._table.create_write_transaction(
                adds,
                mode="append",
                schema=SCHEMA,
                partition_by=PARTITION_BY,
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(app, version) for app, version in sorted(versions.items())]
                ),
                post_commithook_properties=POST_COMMIT,
            )
        except BaseException:
            self._delete_files([add.path for add in adds])  # not in the log: nobody reads them
            raise

    def _write_file(self, kind: str, table: pa.Table) -> AddAction:
        relative = f"kind={kind}/part-{uuid.uuid4().hex}.parquet"
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        data = buffer.getvalue()
        path = f"{self.location.root}/{relative}"
        if isinstance(self.location.filesystem, pafs.LocalFileSystem):
            self.location.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.location.filesystem.open_output_stream(path) as out:
            out.write(data)
        return AddAction(
            path=relative,
            size=data.size,
            partition_values={"kind": kind},
            modification_time=int(time.time() * 1000),
            data_change=True,
            stats=f'{{"numRecords":{table.num_rows}}}',
        )

    def _delete_files(self, relatives: Sequence[str]) -> None:
        for relative in relatives:
            with contextlib.suppress(OSError):  # vacuum removes what is left
                self.location.filesystem.delete_file(f"{self.location.root}/{relative}")

    # -- reading -------------------------------------------------------------------------------------------------
    def offsets(self, sources: Sequence[str]) -> dict[str, int]:
        """The next offset to consume of each source the table has offsets for."""
        with self._lock:
            return self._follow(sources)

    def read(self, kind: str, columns: Sequence[str]) -> pa.Table:
        """Every row of `kind` as committed (duplicates included; `lema.dataset.reader` removes them)."""
        with self._lock:
            self._table.update_incremental()
            return self._table.to_pyarrow_table(filters=[("kind", "=", kind)], columns=list(columns))

    def version(self) -> int:
        with self._lock:
            return self._table.version()

    # -- maintenance ---------------------------------------------------------------------------------------------
    def compact(self) -> dict[str, Any]:
        """Merge the small files of every kind (safe alongside running writers: no data change)."""
        with self._lock:
            return self._compact(())

    def _compact(self, kinds: Sequence[str]) -> dict[str, Any]:
        """Merge the files of `kinds` (all if empty) under `COMPACT_TARGET_BYTES` into files of at most that size, in
        one commit (`CommitFailedError` if another compaction committed since this one read the table)."""
        self._table.update_incremental()
        version = self._table.version()
        files = pa.table(self._table.get_add_actions(flatten=True)).select(["path", "size_bytes", "partition.kind"])
        small: dict[str, list[tuple[int, str]]] = {}
        for path, size, kind in zip(*(column.to_pylist() for column in files.columns), strict=True):
            if size < COMPACT_TARGET_BYTES and (not kinds or kind in kinds):
                small.setdefault(kind, []).append((size, path))
        actions: list[AddAction | RemoveAction] = []
        removed = 0
        for kind, candidates in sorted(small.items()):
            for group in _bins(sorted(candidates)):
                actions += [*self._remove(kind, group), self._merge(kind, group)]
                removed += len(group)
        if not actions:
            return {"numFilesRemoved": 0, "numFilesAdded": 0}
        try:
            self._table.create_write_transaction(
                actions,
                mode="append",
                schema=SCHEMA,
                partition_by=PARTITION_BY,
                commit_properties=CommitProperties(app_transactions=[Transaction(COMPACTION_APP, version)]),
                post_commithook_properties=POST_COMMIT,
            )
        except BaseException:
            self._delete_files([a.path for a in actions if isinstance(a, AddAction)])
            raise
        finally:
            pa.default_memory_pool().release_unused()  # the merge's buffers: not held until the next compaction
        return {"numFilesRemoved": removed, "numFilesAdded": len(actions) - removed}

    @staticmethod
    def _remove(kind: str, group: Sequence[tuple[int, str]]) -> list[AddAction | RemoveAction]:
        now = int(time.time() * 1000)
        return [RemoveAction(path, False, now, size, {"kind": kind}) for size, path in group]

    def _merge(self, kind: str, group: Sequence[tuple[int, str]]) -> AddAction:
        """One file with the rows of `group`'s files, in row groups of `COMPACT_ROW_GROUP`; the files are read
        `UPLOADS` at a time (on S3 each read is a round trip) and written out as they come."""
        relative = f"kind={kind}/part-{uuid.uuid4().hex}.parquet"
        path = f"{self.location.root}/{relative}"
        sources = [f"{self.location.root}/{source}" for _, source in group]
        rows, pending = 0, []
        with (
            self.location.filesystem.open_output_stream(path) as out,
            pq.ParquetWriter(out, FILE_SCHEMA, compression="zstd") as writer,
        ):
            for start in range(0, len(sources), 4 * UPLOADS):  # what is in memory: a few dozen small files
                for table in self._uploads.map(partial(self._read_file, kind), sources[start : start + 4 * UPLOADS]):
                    pending.append(table)
                    rows += table.num_rows
                    if sum(t.num_rows for t in pending) >= COMPACT_ROW_GROUP:
                        writer.write_table(pa.concat_tables(pending), row_group_size=COMPACT_ROW_GROUP)
                        pending = []
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=COMPACT_ROW_GROUP)
        return AddAction(
            path=relative,
            size=self.location.filesystem.get_file_info(path).size,
            partition_values={"kind": kind},
            modification_time=int(time.time() * 1000),
            data_change=False,
            stats=f'{{"numRecords":{rows}}}',
        )

    def _read_file(self, kind: str, path: str) -> pa.Table:
        """A data file of `kind` with the columns of `FILE_SCHEMA`; only the kind's columns are decoded (a file's
        other columns are null, and decoding them too costs twice as much)."""
        columns = kind_columns(kind)
        with self.location.filesystem.open_input_file(path) as source:
            table = pq.ParquetFile(source).read(columns=columns)
        rows = table.num_rows
        filled = [table[field.name] if field.name in columns else pa.nulls(rows, field.type) for field in FILE_SCHEMA]
        return pa.Table.from_arrays(filled, names=FILE_SCHEMA.names).cast(FILE_SCHEMA)  # delta-rs's files too

    def replace_kind(self, kind: str, table: pa.Table, read_version: int) -> None:
        """Replace every row of `kind` by `table` (the deduplicated rows read at `read_version`).

        Raises `CommitFailedError` if a writer appended to `kind` since `read_version`: nothing is lost, the caller
        reads again and retries.
        """
        if kind == BATCHES:
            raise ValueError("batch counters are never rewritten")
        with self._lock:
            self._table.load_as_version(read_version)
            write_deltalake(
                self._table,
                table.append_column("kind", pa.array([kind] * table.num_rows, pa.string())).select(SCHEMA.names),
                mode="overwrite",
                predicate=f"kind = '{kind}'",
                partition_by=PARTITION_BY,
            )
            self._table.update_incremental()

    def vacuum(self, retention_hours: int) -> list[str]:
        """Delete files no commit of the last `retention_hours` references (replaced by compaction, or orphaned by a
        failed commit), and log entries older than the table's log retention that a checkpoint replaces (writers
        skip that clean-up: it lists the whole log). Keep `retention_hours` longer than any commit takes, or a file
        written for a commit in progress goes."""
        with self._lock:
            self._table.update_incremental()
            removed: list[str] = self._table.vacuum(
                retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True
            )
            self._table.cleanup_metadata()
            return removed


def _bins(files: Sequence[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """`files` ((size, path), smallest first) in groups to merge: a file joins the group if it is no larger than the
    group so far and the sum stays within `COMPACT_TARGET_BYTES`, else starts the next group; a file alone is left
    as it is."""
    group: list[tuple[int, str]] = []
    total = 0
    for size, path in files:
        if group and (size > total or total + size > COMPACT_TARGET_BYTES):
            if len(group) > 1:
                yield group
            group, total = [], 0
        group.append((size, path))
        total += size
    if len(group) > 1:
        yield group
