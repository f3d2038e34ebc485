"""A journal of completions keyed by request, so finished LLM work is never paid for twice.

`JournaledBackend` wraps any backend: requests already in the journal are answered from it, the rest go to the inner
backend and are appended (one flushed JSON line per request) before they are returned. A run stopped by Ctrl-C or
SIGKILL therefore resumes without repeating a single finished call; a torn last line is ignored on reload.

`ReplayBackend` answers only from a journal: recorded completions let tests and benchmarks exercise transports and
stages at full speed without an LLM.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO

from lema.llm.base import Completion, GenerationRequest, LLMBackend, LLMError, TokenUsage
from lema.records import stable_id


def request_key(model: str, request: GenerationRequest) -> str:
    """What determines a completion: model, messages, sampling parameters, seed and n."""
    return stable_id(
        "r",
        model,
        [(m.role, m.content) for m in request.messages],
        request.params.model_dump(),
        request.n,
    )


def _read_journal(path: Path) -> dict[str, list[Completion]]:
    entries: dict[str, list[Completion]] = {}
    if not path.exists():
        return entries
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                entries[entry["key"]] = [Completion(**c) for c in entry["completions"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a kill mid-write: that request simply runs again
    return entries


class JournaledBackend:
    def __init__(self, inner: LLMBackend, path: Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries = _read_journal(self.path)
        self._lock = threading.Lock()
        self._handle: IO[str] = self.path.open("a", encoding="utf-8")
        self.hits = 0

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def usage(self) -> TokenUsage:
        return self.inner.usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        keys = [request_key(self.model, r) for r in requests]
        missing: dict[str, GenerationRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in self._entries:
                missing.setdefault(key, request)
        self.hits += sum(key not in missing for key in keys)
        if missing:
            fresh = self.inner.generate(list(missing.values()))
            with self._lock:
                for key, completions in zip(missing, fresh, strict=True):
                    self._entries[key] = completions
                    record = {"key": key, "completions": [asdict(c) for c in completions]}
                    self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._handle.flush()
                os.fsync(self._handle.fileno())
        return [self._entries[k] for k in keys]

    def close(self) -> None:
        self._handle.close()
        self.inner.close()


class ReplayBackend:
    def __init__(self, path: Path | None, model: str) -> None:
        if path is None or not Path(path).exists():
            raise LLMError(f"replay backend for {model!r}: recording file {path} does not exist")
        self.path = Path(path)
        self._model = model
        self._entries = _read_journal(self.path)
        self._usage = TokenUsage()

    @property
    def model(self) -> str:
        return self._model

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for request in requests:
            key = request_key(self._model, request)
            if key not in self._entries:
                preview = request.messages[-1].content[:60] if request.messages else ""
                raise LLMError(f"{self.path}: no recorded completion for request {key} ({preview!r}...)")
            completions = self._entries[key]
            self._usage.add(completions, 0.0)
            out.append(completions)
        return out

    def close(self) -> None:
        pass
