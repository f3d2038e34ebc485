"""`lema dlq list|show|redrive`: the operator's way back from a bad deploy.

A dead letter keeps the original key and bytes (the payload, unless it was too large for the broker) and headers
naming the error, the source topic/partition/offset, the consumer group and the tries. Letters are addressed by
their place on the dead-letter topic, `PARTITION:OFFSET`. `redrive` republishes letters to their source topic with
the original key, value and non-lema headers, plus `lema-redriven-from`; every consumer group of that topic sees
them again, which is harmless: records have deterministic ids and every sink keeps each id once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lema.bus.base import Topics

if TYPE_CHECKING:
    from lema.config import BusSettings

app = typer.Typer(no_args_is_help=True, help="Inspect and redrive the dead-letter topic.")
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a setting: --set bus.topic_prefix=x.")
]
SourceOption = Annotated[str | None, typer.Option("--source", help="Only letters from this topic (e.g. 'paths').")]
ErrorOption = Annotated[str | None, typer.Option("--error", help="Only letters whose error contains this text.")]
READ_TIMEOUT_S = 60.0
REDRIVEN_FROM = "lema-redriven-from"


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    source_topic: str
    """Without the topic prefix, e.g. 'paths'."""

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        return next((value.decode(errors="replace") for key, value in self.headers if key == name), "")

    @property
    def error(self) -> str:
        return self.header("lema-error")

    @property
    def has_payload(self) -> bool:
        """False when the payload was left out (too large for the dead-letter topic)."""
        return self.value is not None and not self.header("lema-payload-dropped")

    @property
    def size(self) -> str:
        """The original message's size in bytes, as its worker measured it."""
        return self.header("lema-source-size") or (str(len(self.value)) if self.value is not None else "?")


def read_dead_letters(
    settings: BusSettings, source: str | None = None, error: str | None = None, positions: Sequence[str] = ()
) -> list[DeadLetter]:
    """Every letter on the dead-letter topic up to its current end, filtered by source topic, error and position."""
    from kafka import KafkaConsumer, TopicPartition

    from lema.bus.kafka import client_options

    consumer = KafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        client_id="lema-dlq",
        fetch_max_wait_ms=100,
    )
    topic = settings.topic_prefix + Topics.DLQ
    letters: list[DeadLetter] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + READ_TIMEOUT_S
        # A fetch's high watermark is exact where a broker's end offset may not be (Tansu reports the last batch's
        # base offset + 1): read on until both are reached.
        while any(consumer.position(tp) < max(ends[tp], consumer.highwater(tp) or 0) for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {READ_TIMEOUT_S:.0f}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    headers = [(k, v or b"") for k, v in (r.headers or ())]
                    source_header = next((v.decode() for k, v in headers if k == "lema-source-topic"), "")
                    source_topic = source_header.removeprefix(settings.topic_prefix)
                    letters.append(DeadLetter(tp.partition, r.offset, r.key, r.value, headers, source_topic))
    finally:
        consumer.close()
    letters.sort(key=lambda letter: (letter.partition, letter.offset))
    return [
        letter
        for letter in letters
        if (source is None or letter.source_topic == source)
        and (error is None or error.casefold() in letter.error.casefold())
        and (not positions or letter.position in positions)
    ]


def redrive(settings: BusSettings, letters: Sequence[DeadLetter]) -> tuple[Counter[str], list[tuple[DeadLetter, str]]]:
    """Republish letters to their source topics; returns (count per source topic, [(letter, why it was skipped)])."""
    from lema.bus.kafka import RawMessage, kafka_bus

    skipped: list[tuple[DeadLetter, str]] = []
    messages: list[RawMessage] = []
    for letter in letters:
        if not letter.has_payload:
            skipped.append((letter, f"its payload was not kept (original size: {letter.size} bytes)"))
        elif letter.source_topic not in Topics.ALL or letter.source_topic == Topics.DLQ:
            skipped.append((letter, f"unknown source topic {letter.header('lema-source-topic')!r}"))
        else:
            headers = [(k, v) for k, v in letter.headers if not k.startswith("lema-")]
            headers.append((REDRIVEN_FROM, f"{Topics.DLQ}@{letter.position}".encode()))
            messages.append(RawMessage(letter.source_topic, letter.key, letter.value, headers))
    if messages:
        bus = kafka_bus(settings, client_id="lema-dlq-redrive")
        try:
            bus.publish_raw(messages)
        finally:
            bus.close()
    return Counter(m.topic for m in messages), skipped


def _bus(config: Path | None, overrides: list[str] | None) -> BusSettings:
    from lema.runtime.commands import _load

    return _load(config, overrides).bus


def _preview(value: bytes | None, limit: int = 60) -> str:
    return "" if value is None else value.decode(errors="replace")[:limit]


@app.command("list")
def list_command(
    source: SourceOption = None, error: ErrorOption = None, config: ConfigOption = None, overrides: SetOption = None
) -> None:
    """One line per dead letter (position, source topic, consumer group, key, size, error), then counts."""
    letters = read_dead_letters(_bus(config, overrides), source, error)
    for letter in letters:
        size = f"{letter.size}B" if letter.has_payload else f"no payload ({letter.size}B)"
        typer.echo(
            f"{letter.position:>9}  {letter.source_topic:<22} {letter.header('lema-consumer-group'):<22} "
            f"key={_preview(letter.key, 24):<24} {size:<22} {letter.error[:100]}"
        )
    by_source = Counter(letter.source_topic for letter in letters)
    summary = ", ".join(f"{topic}={n}" for topic, n in sorted(by_source.items())) or "none"
    typer.echo(f"{len(letters)} dead letter(s): {summary}")


@app.command("show")
def show_command(
    positions: Annotated[list[str], typer.Argument(help="Letters to show, as PARTITION:OFFSET (from `dlq list`).")],
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Everything about the given letters: headers, key and the decoded record (or the raw bytes)."""
    from lema.runtime.wire import WireError, decode

    letters = read_dead_letters(_bus(config, overrides), positions=positions)
    missing = sorted(set(positions) - {letter.position for letter in letters})
    for letter in letters:
        typer.echo(f"--- {Topics.DLQ}@{letter.position}")
        for key, value in letter.headers:
            typer.echo(f"{key}: {value.decode(errors='replace')}")
        typer.echo(f"key: {_preview(letter.key, 200)}")
        if not letter.has_payload:
            typer.echo("payload: not kept (too large for the broker); this letter cannot be redriven")
            continue
        assert letter.value is not None
        try:
            record = decode(letter.value)
            typer.echo(f"record ({type(record).__name__}): {json.dumps(record.model_dump(mode='json'), indent=2)}")
        except WireError as exc:
            typer.echo(f"payload ({len(letter.value)} bytes, not a record: {exc}): {letter.value[:200]!r}")
    if missing:
        typer.echo(f"error: no dead letter at {', '.join(missing)}", err=True)
        raise typer.Exit(1)


@app.command("redrive")
def redrive_command(
    source: SourceOption = None,
    error: ErrorOption = None,
    positions: Annotated[
        list[str] | None, typer.Option("--position", help="Only this letter (PARTITION:OFFSET); repeatable.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be redriven; publish nothing.")] = False,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Republish the matching letters to their source topics (after a fix), with their original keys."""
    settings = _bus(config, overrides)
    letters = read_dead_letters(settings, source, error, positions or ())
    if not letters:
        typer.echo("no dead letter matches; nothing redriven")
        return
    if dry_run:
        for letter in letters:
            verdict = "would redrive" if letter.has_payload else "cannot redrive (payload not kept)"
            typer.echo(f"{letter.position:>9}  {verdict} to {letter.source_topic}: {letter.error[:100]}")
        return
    published, skipped = redrive(settings, letters)
    for letter, why in skipped:
        typer.echo(f"{letter.position:>9}  not redriven: {why}")
    per_topic = ", ".join(f"{topic}={n}" for topic, n in sorted(published.items())) or "nothing"
    typer.echo(f"redrove {sum(published.values())} of {len(letters)} dead letter(s): {per_topic}")
    if skipped:
        raise typer.Exit(1)
