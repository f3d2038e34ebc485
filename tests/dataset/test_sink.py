"""The Delta dataset sink on a local directory: each record once, offsets in the commit, compaction, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from dataset_testing import records
from deltalake import DeltaTable
from typer.testing import CliRunner

from lema.bus.base import Topics
from lema.cli import app
from lema.config import LemaSettings
from lema.dataset import DatasetSinkError, create_sink, reader
from lema.dataset.base import DatasetSink
from lema.dataset.table import TableLocation
from lema.records import Drop, Record
from lema.stages.dataset import table_rows
from lema.store import LocalStore

RUN = "run"


def settings(root: Path, **dataset: object) -> LemaSettings:
    return LemaSettings.model_validate({"run": {"name": RUN}, "store": {"root": str(root)}, "dataset": dataset})


def feed(sink: DatasetSink, config: LemaSettings, batches: list[tuple[str, list[Record]]]) -> None:
    for topic, batch in batches:
        sink.append(table_rows(topic, batch, config.dataset))


def exported(sink: DatasetSink, config: LemaSettings, root: Path) -> dict[str, bytes]:
    store = LocalStore(root)
    reader.export(sink, RUN, store, RUN, config.dataset)
    return {name: store.get_bytes(f"{RUN}/{name}") for name in ("cot.jsonl", "corrections.jsonl")}


def test_each_record_once_whatever_the_order_and_redeliveries(tmp_path: Path) -> None:
    once_config, twice_config = settings(tmp_path / "once"), settings(tmp_path / "twice")
    once, twice = create_sink(once_config), create_sink(twice_config)
    batches = list(records().items())
    feed(once, once_config, batches)
    # Every record delivered twice (upstream redelivery: same id, new offset), in the opposite order first.
    feed(twice, twice_config, list(reversed(batches)) + batches)
    assert twice.read("cot", ["id"]).num_rows == 2 * once.read("cot", ["id"]).num_rows
    assert exported(once, once_config, tmp_path / "a") == exported(twice, twice_config, tmp_path / "b")

    files = exported(twice, twice_config, tmp_path / "b")
    cot_ids = [json.loads(line)["id"] for line in files["cot.jsonl"].splitlines()]
    assert cot_ids == sorted(set(cot_ids)) and len(cot_ids) == 3 + 3  # sampled + gold, each once, sorted
    summary = json.loads((tmp_path / "b" / RUN / "run_summary.json").read_text())
    assert summary["stages"]["check"] == {"correct": 3, "wrong": 3}
    assert summary["stages"]["verify"] == {"verified": 2, "rejected": 1}
    assert summary["correction_yield"] == round(2 / 3, 4)
    assert summary["drops"] == {"verify/wrong_answer": 1}
    assert summary["dataset"] == {"cot": 6, "cot_gold": 3, "corrections": 2}
    assert summary["run"] == RUN and set(reader.RUNTIME_KEYS) <= set(summary)
    assert summary["processed"]["check"] == 6 and summary["llms"]["smollm2-135m"] == {"paths": 6, "corrections": 2}


def test_offsets_commit_with_the_rows_and_a_held_batch_is_skipped(tmp_path: Path) -> None:
    config = settings(tmp_path)
    sink = create_sink(config)
    drops = records()[Topics.DROPS]
    assert sink.append(table_rows(Topics.DROPS, drops, config.dataset), {"g/drops/0": 10, "g/drops/1": 4})
    assert sink.offsets(["g/drops/0", "g/drops/1", "g/drops/2"]) == {"g/drops/0": 10, "g/drops/1": 4}
    # The same batch again (a restarted writer that had not committed to Kafka): nothing is written.
    assert not sink.append(table_rows(Topics.DROPS, drops, config.dataset), {"g/drops/0": 10, "g/drops/1": 4})
    assert sink.read("drops", ["id"]).num_rows == 1
    # A restarted process reads the offsets back from the store.
    assert create_sink(config).offsets(["g/drops/0"]) == {"g/drops/0": 10}


def test_a_zombie_writer_is_refused_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    config = settings(tmp_path)
    owner, zombie = create_sink(config), create_sink(config)
    questions = records()[Topics.QUESTIONS]
    assert zombie.offsets(["g/questions/0"]) == {}  # the zombie's snapshot: before the owner's commit
    owner.append(table_rows(Topics.QUESTIONS, questions, config.dataset), {"g/questions/0": 3})
    # The zombie, which lost the partition, commits the same batch: the log's conflict check on the app id
    # refuses it, it re-reads the table's offsets and finds the batch already there.
    assert not zombie.append(table_rows(Topics.QUESTIONS, questions, config.dataset), {"g/questions/0": 3})
    assert owner.read("questions", ["id"]).num_rows == 3
    # A batch only partly held is appended (its rows are removed on read); no offset goes back.
    more = [*questions, records()[Topics.QUESTIONS][0].model_copy(update={"id": "q-extra"})]
    assert zombie.append(table_rows(Topics.QUESTIONS, more, config.dataset), {"g/questions/0": 2, "g/questions/1": 1})
    assert owner.offsets(["g/questions/0", "g/questions/1"]) == {"g/questions/0": 3, "g/questions/1": 1}
    assert [q.id for q in reader.read_records(owner, "questions")] == sorted({q.id for q in more})


def test_compact_merges_files_and_removes_duplicates_without_changing_the_export(tmp_path: Path) -> None:
    config = settings(tmp_path)
    sink = create_sink(config)
    for _ in range(3):
        feed(sink, config, list(records().items()))
    before = exported(sink, config, tmp_path / "before")
    files_before = len(DeltaTable(TableLocation.of(config.store, RUN).uri).file_uris())
    merged = sink.compact()
    assert merged["numFilesRemoved"] > merged["numFilesAdded"]
    assert len(DeltaTable(TableLocation.of(config.store, RUN).uri).file_uris()) < files_before
    dedup = reader.deduplicate(sink)
    assert dedup.removed["cot"] == 2 * 6 and dedup.removed["drops"] == 2 and not dedup.skipped
    for kind in ("questions", "paths", "cot", "corrections", "drops"):
        ids = sink.read(kind, ["id"]).column("id")
        assert len(ids) == len(ids.unique()), kind
    assert exported(sink, config, tmp_path / "after") == before
    assert reader.deduplicate(sink).removed == {}
    sink.vacuum(retention_hours=1)  # the replaced files are younger: kept, the table stays readable
    assert exported(sink, config, tmp_path / "vacuumed") == before


def test_the_offsets_survive_compaction(tmp_path: Path) -> None:
    config = settings(tmp_path)
    sink = create_sink(config)
    drop = Drop(stage="correct", reason="unparsable", record_id="c-1")
    sink.append(table_rows(Topics.DROPS, [drop], config.dataset), {"g/drops/0": 1})
    sink.append(table_rows(Topics.DROPS, [drop], config.dataset), {"g/drops/0": 2})
    sink.compact()
    reader.deduplicate(sink)
    assert create_sink(config).offsets(["g/drops/0"]) == {"g/drops/0": 2}


def test_standard_engines_read_the_table(tmp_path: Path) -> None:
    config = settings(tmp_path)
    feed(create_sink(config), config, list(records().items()))
    table = DeltaTable(str(tmp_path / RUN / "table")).to_pyarrow_table(filters=[("kind", "=", "corrections")])
    assert isinstance(table, pa.Table) and table.num_rows == 2
    assert set(table.column("corrector_model").to_pylist()) == {"smollm2-135m"}


def test_parquet_and_hf_exports(tmp_path: Path) -> None:
    config = settings(tmp_path, formats=["jsonl", "parquet", "hf"])
    sink = create_sink(config)
    feed(sink, config, list(records().items()))
    keys = reader.export(sink, RUN, LocalStore(tmp_path / "out"), RUN, config.dataset)
    assert {f"{RUN}/cot.parquet", f"{RUN}/corrections.parquet", f"{RUN}/hf/dataset_dict.json"} <= set(keys)
    import datasets

    loaded = datasets.load_from_disk(str(tmp_path / "out" / RUN / "hf"))
    assert loaded["corrections"][0]["incorrect_step"] == 1 and len(loaded["cot"]) == 6


def test_the_training_job_reads_the_examples_from_the_store(tmp_path: Path) -> None:
    config = settings(tmp_path)
    sink = create_sink(config)
    feed(sink, config, list(records().items()) * 2)
    examples = reader.read_examples(config.store, RUN)
    assert len(examples.cot) == 6 and len(examples.corrections) == 2
    assert [e.id for e in examples.cot] == sorted(e.id for e in examples.cot)
    with pytest.raises(DatasetSinkError, match="no dataset table"):
        reader.read_examples(config.store, "never-ran")


def test_the_dataset_commands(tmp_path: Path) -> None:
    config = settings(tmp_path)
    sink = create_sink(config)
    feed(sink, config, list(records().items()) * 2)
    runner = CliRunner()
    where = ["--set", f"store.root={tmp_path}"]
    done = runner.invoke(app, ["dataset", "export", RUN, "--out", str(tmp_path / "out"), *where])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "cot.jsonl").read_bytes() == exported(sink, config, tmp_path / "ref")["cot.jsonl"]
    stats = runner.invoke(app, ["dataset", "stats", RUN, *where])
    assert stats.exit_code == 0 and "correction yield" in stats.output and "verify/wrong_answer" in stats.output
    compact = runner.invoke(app, ["dataset", "compact", RUN, *where])
    assert compact.exit_code == 0 and json.loads(compact.output)["duplicates_removed"]["cot"] == 6
    assert runner.invoke(app, ["dataset", "vacuum", RUN, *where]).exit_code == 0
    missing = runner.invoke(app, ["dataset", "stats", "nothing", *where])
    assert missing.exit_code == 2 and "no dataset table" in missing.output
    bad = runner.invoke(app, ["dataset", "export", RUN, "--format", "csv", *where])
    assert bad.exit_code == 2 and "unknown ['csv']" in bad.output


def test_offsets_are_looked_up_once_then_followed_through_new_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(tmp_path, checkpoint_interval=2)
    writer, other = create_sink(config), create_sink(config)
    lookups: list[str] = []
    lookup = DeltaTable.transaction_version
    monkeypatch.setattr(DeltaTable, "transaction_version", lambda table, app: lookups.append(app) or lookup(table, app))
    assert writer.offsets(["g/drops/1"]) == {}
    drops = records()[Topics.DROPS]
    for offset in range(1, 6):  # the two writers' commits interleave, across checkpoints
        assert writer.append(table_rows(Topics.DROPS, drops, config.dataset), {"g/drops/0": offset})
        assert other.append(table_rows(Topics.DROPS, drops, config.dataset), {"g/drops/1": offset})
    assert writer.offsets(["g/drops/0", "g/drops/1"]) == {"g/drops/0": 5, "g/drops/1": 5}
    assert sorted(lookups) == ["g/drops/0", "g/drops/1", "g/drops/1"]  # once per sink and app id
    assert list((tmp_path / RUN / "table" / "_delta_log").glob("*.checkpoint.parquet"))
    # The other writer's batch redelivered to this one (a rebalance) is seen as held: skipped.
    assert not writer.append(table_rows(Topics.DROPS, drops, config.dataset), {"g/drops/1": 5})
