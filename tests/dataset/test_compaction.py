"""The sink's scheduled compaction: live files stay bounded, rows and exports never change, replicas that compact at
once both go on."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from dataset_testing import records
from deltalake import DeltaTable
from test_sink import RUN, exported, settings

from lema.config import LemaSettings
from lema.dataset import create_sink, delta, reader
from lema.dataset.base import DatasetSink
from lema.dataset.table import COLUMNS, TableLocation
from lema.stages.dataset import table_rows

KINDS = ("questions", "paths", "cot", "corrections", "drops", "batches")


def live_files(config: LemaSettings) -> int:
    return len(DeltaTable(TableLocation.of(config.store, RUN).uri).file_uris())


def rows(sink: DatasetSink) -> dict[str, list[dict[str, object]]]:
    """Every row of every kind, duplicates included, in a fixed order (compaction may reorder them); of `batches`,
    the records each commit counted (their ids and times are the commit's own)."""
    columns = [name for name in COLUMNS if name not in ("kind", "writer", "records", "seconds", "written_at")]
    key = lambda row: repr(sorted(row.items()))  # noqa: E731
    kinds = {kind: sorted(sink.read(kind, columns).to_pylist(), key=key) for kind in KINDS[:-1]}
    return {**kinds, "batches": sorted(sink.read("batches", ["records"]).to_pylist(), key=key)}


def append_round(sink: DatasetSink, config: LemaSettings, partition: int, offset: int) -> None:
    """Every topic's records, each topic one commit with its partition's next offset."""
    for topic, batch in records().items():
        assert sink.append(table_rows(topic, batch, config.dataset), {f"g/{topic}/{partition}": offset})


def test_live_files_stay_bounded_and_the_rows_do_not_change(tmp_path: Path) -> None:
    compacted, plain = settings(tmp_path / "on", compact_every_commits=5), settings(tmp_path / "off")
    on, off = create_sink(compacted), create_sink(plain)
    most = 0
    for offset in range(1, 13):  # 60 commits, 12 scheduled compactions
        append_round(on, compacted, 0, offset)
        append_round(off, plain, 0, offset)
        most = max(most, live_files(compacted))
    # A commit adds at most 3 files (its kinds, and `batches`): a merged file per kind, plus 5 commits' files.
    assert most <= len(KINDS) + 3 * 5
    assert live_files(plain) > 100
    assert rows(on) == rows(off)
    assert exported(on, compacted, tmp_path / "a") == exported(off, plain, tmp_path / "b")
    assert on.offsets([f"g/{topic}/0" for topic in records()]) == {f"g/{topic}/0": 12 for topic in records()}


def test_merged_files_are_merged_again_only_once_as_much_new_data_came(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "COMPACT_TARGET_BYTES", 20)
    groups = lambda sizes: [[size for size, _ in group] for group in delta._bins([(s, "") for s in sizes])]  # noqa: E731
    assert groups([1, 1, 1, 2, 9]) == [[1, 1, 1, 2]]  # the new files; the 9 waits for as much new data
    assert groups([1, 1, 1, 2, 5, 12]) == [[1, 1, 1, 2, 5]]  # the 5 of the last time joins 5 new; the 12 waits
    assert groups([1, 1, 2, 2, 6, 12]) == [[1, 1, 2, 2, 6]]  # the 12 would take the merged file past the target
    assert groups([5, 11, 19]) == []  # merged files no larger than the target, left alone


def test_zero_turns_compaction_off(tmp_path: Path) -> None:
    config = settings(tmp_path, compact_every_commits=0)
    sink = create_sink(config)
    append_round(sink, config, 0, 1)
    per_round = live_files(config)
    for offset in range(2, 42):  # 205 commits
        append_round(sink, config, 0, offset)
    assert live_files(config) == 41 * per_round
    table = DeltaTable(TableLocation.of(config.store, RUN).uri)
    assert table.transaction_version(delta.COMPACTION_APP) is None


def test_a_replica_whose_compaction_loses_the_race_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(tmp_path, compact_every_commits=5)
    first, second = create_sink(config), create_sink(config)
    append_round(first, config, 0, 1)  # 5 commits: the first writer compacts
    before = rows(first)
    merge = second._merge
    raced: list[bool] = []

    def merge_after_the_other(kind: str, group: list[tuple[int, str]]) -> delta.AddAction:
        if not raced:  # the first writer compacts the same files while the second merges them
            raced.append(True)
            append_round(first, config, 0, 2)
        return merge(kind, group)

    monkeypatch.setattr(second, "_merge", merge_after_the_other)
    with caplog.at_level(logging.INFO, logger="lema.dataset.delta"):
        append_round(second, config, 1, 1)  # its 5th commit compacts, loses to the first writer's compaction
    assert raced and "another writer rewrote these files first" in caplog.text
    assert second.offsets(["g/drops/1", "g/drops/0"]) == {"g/drops/1": 1, "g/drops/0": 2}
    after = rows(first)
    for kind in KINDS[:-1]:  # every row once per round that appended it, none lost, none doubled
        assert len(after[kind]) == 3 * len(before[kind]), kind


def test_two_replicas_compacting_concurrently_keep_writing_and_lose_nothing(tmp_path: Path) -> None:
    config = settings(tmp_path, compact_every_commits=3)
    plain = settings(tmp_path / "plain")
    errors: list[BaseException] = []

    def replica(partition: int) -> None:
        try:
            sink = create_sink(config)
            for offset in range(1, 9):
                append_round(sink, config, partition, offset)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(p,)) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    reference = create_sink(plain)
    for partition in (0, 1):
        for offset in range(1, 9):
            append_round(reference, plain, partition, offset)
    sink = create_sink(config)
    got, want = rows(sink), rows(reference)
    for kind in KINDS[:-1]:
        assert got[kind] == want[kind], kind
    assert len(got["batches"]) == len(want["batches"]) == 2 * 8 * 5
    assert live_files(config) < live_files(plain) // 2
    sources = [f"g/{topic}/{p}" for topic in records() for p in (0, 1)]
    assert sink.offsets(sources) == dict.fromkeys(sources, 8)
    assert exported(sink, config, tmp_path / "a") == exported(reference, plain, tmp_path / "b")


def test_compaction_of_a_table_without_small_files_commits_nothing(tmp_path: Path) -> None:
    config = settings(tmp_path)
    sink = create_sink(config)
    version = sink.version()
    assert sink.compact() == {"numFilesRemoved": 0, "numFilesAdded": 0}
    assert sink.version() == version


def test_files_that_deduplication_wrote_are_compacted_with_the_same_rows(tmp_path: Path) -> None:
    config = settings(tmp_path, compact_every_commits=0)
    sink = create_sink(config)
    append_round(sink, config, 0, 1)
    append_round(sink, config, 0, 2)
    reader.deduplicate(sink)  # delta-rs writes these files
    append_round(sink, config, 0, 3)
    before, export = rows(sink), exported(sink, config, tmp_path / "a")
    assert sink.compact()["numFilesRemoved"] > 0
    assert rows(sink) == before
    assert exported(sink, config, tmp_path / "b") == export


def test_a_compaction_and_a_deduplication_at_once_never_double_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(tmp_path, compact_every_commits=0)
    writer, maintenance = create_sink(config), create_sink(config)
    append_round(writer, config, 0, 1)
    append_round(writer, config, 0, 2)  # every record twice
    merge = writer._merge

    def merge_while_deduplicating(kind: str, group: list[tuple[int, str]]) -> delta.AddAction:
        if kind == "cot":
            reader.deduplicate(maintenance)  # commits first: the compaction read files it replaced
        return merge(kind, group)

    monkeypatch.setattr(writer, "_merge", merge_while_deduplicating)
    with pytest.raises(delta.CommitFailedError):
        writer.compact()
    once = rows(maintenance)
    for kind in KINDS[:-1]:
        ids = [row["id"] for row in once[kind]]
        assert len(ids) == len(set(ids)), kind
