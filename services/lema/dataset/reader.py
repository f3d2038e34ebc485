"""Reading a run's table back: each record once, sorted by id, as the files `lema run` writes.

Upstream redeliveries (a record produced again with the same deterministic id) and a writer's re-appended batch are
removed here, on read: rows of a kind with the same id are one record, and when two such rows differ (an input
question seen on two lines) the smaller one in canonical JSON is kept, so the choice never depends on arrival order.
`deduplicate` (part of `lema dataset compact`) rewrites the table the same way.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from deltalake.exceptions import CommitFailedError

from lema.bus.base import Topics
from lema.config import DatasetSettings, LemaSettings, StoreSettings
from lema.dataset.base import DatasetSink
from lema.dataset.table import BATCHES, FILE_SCHEMA, kind_columns
from lema.records import CorrectionExample, CotExample, Record
from lema.stages.dataset import KIND_RECORDS, jsonl, summarize
from lema.store.base import ArtifactStore

RUNTIME_KEYS = ("run", "llms", "processed", "timings_s")
"""Summary fields that describe how the run ran rather than what it produced."""
DEDUP_RETRIES = 5
ExportFormat = Literal["jsonl", "parquet", "hf"]


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def distinct_rows(table: pa.Table) -> list[dict[str, Any]]:
    """One row per id (see the module docstring for which), sorted by id."""
    chosen: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        prior = chosen.get(row["id"])
        if prior is None or (prior != row and _canonical(row) < _canonical(prior)):
            chosen[row["id"]] = row
    return [chosen[key] for key in sorted(chosen)]


def read_records(sink: DatasetSink, kind: str) -> list[Record]:
    """The distinct records of `kind`, sorted by id."""
    model = KIND_RECORDS[kind]  # type: ignore[index]
    fields = list(model.model_fields)
    rows = distinct_rows(sink.read(kind, kind_columns(kind)))
    return [model.model_validate({k: row[k] for k in fields}) for row in rows]


def summary(sink: DatasetSink, run: str) -> dict[str, Any]:
    """The run summary from the table: what the run produced, plus how the writers ran (`RUNTIME_KEYS`)."""
    questions = distinct_rows(sink.read("questions", kind_columns("questions")))
    paths = distinct_rows(sink.read("paths", kind_columns("paths")))
    corrections = distinct_rows(sink.read("corrections", kind_columns("corrections")))
    drops = distinct_rows(sink.read("drops", kind_columns("drops")))
    cot = distinct_rows(sink.read("cot", kind_columns("cot")))
    produced = summarize(
        (q["round"] for q in questions),
        ((p["model"], p["verdict"]) for p in paths),
        len(corrections),
        ((d["stage"], d["reason"]) for d in drops),
        (c["source"] for c in cot),
    )
    batches = sink.read(BATCHES, ["records", "seconds", "written_at"]).to_pylist()
    llms: dict[str, dict[str, int]] = {}
    for model, count in sorted(Counter(p["model"] for p in paths).items()):
        llms.setdefault(model, {})["paths"] = count
    for model, count in sorted(Counter(c["corrector_model"] for c in corrections).items()):
        llms.setdefault(model, {})["corrections"] = count
    stage_inputs = {
        "sample": len(questions),
        "check": len(paths),
        "correct": produced["stages"]["check"]["wrong"],
        "verify": produced["stages"]["correct"]["parsed"],
        "evolve": len(corrections),
        "dataset": len(questions) + len(paths) + len(corrections) + len(drops),
    }
    times = [b["written_at"] for b in batches]
    runtime = {
        "run": run,
        "llms": llms,
        "processed": stage_inputs,
        "timings_s": {
            "dataset": round(sum(b["seconds"] for b in batches), 3),
            "total": round(max(times) - min(times), 3) if times else 0.0,
        },
    }
    return {**produced, **runtime}


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def export(
    sink: DatasetSink,
    run: str,
    store: ArtifactStore,
    prefix: str,
    settings: DatasetSettings,
    formats: Sequence[ExportFormat] | None = None,
    runtime: dict[str, Any] | None = None,
) -> list[str]:
    """Write `cot.jsonl`, `corrections.jsonl` (+ Parquet / HF) and `run_summary.json` under `prefix` of `store`
    (at its root when `prefix` is empty).

    `runtime` replaces the summary's `RUNTIME_KEYS` (the embedded runtime knows its LLM usage and stage timings).
    """
    formats = tuple(formats or settings.formats)
    cot = [r for r in read_records(sink, "cot") if isinstance(r, CotExample)]
    corrections = [r for r in read_records(sink, "corrections") if isinstance(r, CorrectionExample)]
    keys: list[str] = []
    if "jsonl" in formats:
        for name, examples in (("cot", cot), ("corrections", corrections)):
            store.put_bytes(_key(prefix, f"{name}.jsonl"), jsonl(examples))
            keys.append(_key(prefix, f"{name}.jsonl"))
    if "parquet" in formats or "hf" in formats:
        keys += _export_tables(store, prefix, cot, corrections, formats)
    run_summary = {**summary(sink, run), **(runtime or {})}
    store.put_bytes(_key(prefix, "run_summary.json"), (json.dumps(run_summary, indent=2) + "\n").encode())
    return [*keys, _key(prefix, "run_summary.json")]


def _export_tables(
    store: ArtifactStore,
    prefix: str,
    cot: list[CotExample],
    corrections: list[CorrectionExample],
    formats: Sequence[ExportFormat],
) -> list[str]:
    """Parquet files and/or a Hugging Face `DatasetDict` saved to disk, uploaded through the store."""
    import datasets

    splits = {
        "cot": datasets.Dataset.from_list([e.model_dump() for e in cot]),
        "corrections": datasets.Dataset.from_list([e.model_dump() for e in corrections]),
    }
    keys: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "parquet" in formats:
            for name, split in splits.items():
                split.to_parquet(str(root / f"{name}.parquet"))
                store.upload_file(_key(prefix, f"{name}.parquet"), root / f"{name}.parquet")
                keys.append(_key(prefix, f"{name}.parquet"))
        if "hf" in formats:
            datasets.DatasetDict(splits).save_to_disk(str(root / "hf"))
            for file in sorted(p for p in (root / "hf").rglob("*") if p.is_file()):
                key = _key(prefix, f"hf/{file.relative_to(root / 'hf').as_posix()}")
                store.upload_file(key, file)
                keys.append(key)
    return keys


def records_per_topic(sink: DatasetSink) -> dict[str, int]:
    """Distinct records in the table by the topic they came from (what `lema submit` compares with the topics)."""
    paths = distinct_rows(sink.read("paths", ["id", "verdict"]))
    right = sum(p["verdict"] == "correct" for p in paths)
    return {
        Topics.QUESTIONS: len(distinct_rows(sink.read("questions", ["id"]))),
        Topics.COT: right,
        Topics.MISTAKES: len(paths) - right,
        Topics.VERIFIED: len(distinct_rows(sink.read("corrections", ["id"]))),
        Topics.DROPS: len(distinct_rows(sink.read("drops", ["id"]))),
    }


@dataclass
class Deduplication:
    removed: dict[str, int]
    """Rows removed, by kind."""
    skipped: list[str]
    """Kinds not rewritten because writers kept appending (still correct on read; run compact again when quiet)."""


def deduplicate(sink: DatasetSink) -> Deduplication:
    """Rewrite every kind that holds an id more than once with one row per id.

    The rewrite commits only if nothing was appended since it read the table (Delta's conflict check refuses it
    otherwise, so no concurrent append is ever lost); it is read and tried again `DEDUP_RETRIES` times.
    """
    result = Deduplication({}, [])
    for kind in KIND_RECORDS:
        for _ in range(DEDUP_RETRIES):
            table = sink.read(kind, kind_columns(kind))
            version = sink.version()  # the version `read` just brought the table to
            ids = table.column("id")
            if len(ids) == len(ids.unique()):
                break
            rows = distinct_rows(table)
            try:
                sink.replace_kind(kind, pa.Table.from_pylist(rows, schema=FILE_SCHEMA), version)
            except CommitFailedError:
                continue
            result.removed[kind] = table.num_rows - len(rows)
            break
        else:
            result.skipped.append(kind)
    return result


@dataclass(frozen=True)
class TrainingExamples:
    cot: list[CotExample]
    corrections: list[CorrectionExample]


def read_examples(store: StoreSettings, run: str) -> TrainingExamples:
    """The fine-tuning examples of `run` straight from its table in the store, each once, sorted by id (for the
    training job: no export step needed)."""
    from lema.dataset import create_sink

    settings = LemaSettings.model_validate({"run": {"name": run}})
    sink = create_sink(settings, writer="reader", store=store, create=False)
    return TrainingExamples(
        cot=[r for r in read_records(sink, "cot") if isinstance(r, CotExample)],
        corrections=[r for r in read_records(sink, "corrections") if isinstance(r, CorrectionExample)],
    )
