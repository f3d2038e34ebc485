"""Training examples from the pipeline's datasets: read them from the store, mix them, and tokenize them so that the
loss falls on the target tokens only.

A CoT example is framed exactly as the sampler and `lema eval` frame its question (`training_messages`: the task's
sample template's system prompt and one-shot example, then the question), through the tokenizer's chat template: a
model trained on other framing would be evaluated on text it never saw. A correction example keeps the system prompt
and drops the one-shot solution, whose question is not the one being corrected.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from lema.llm.base import ChatMessage
from lema.prompts import load_prompt
from lema.records import CorrectionExample, CotExample, Task
from lema.store import ArtifactStore
from lema.training.config import DataSettings

log = logging.getLogger(__name__)

COT_FILE = "cot.jsonl"
CORRECTIONS_FILE = "corrections.jsonl"
IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch's cross-entropy default): set on every prompt and padding token."""


class DataError(ValueError):
    """A dataset file is missing or has a bad line; the message names the object and line."""


@dataclass(frozen=True)
class TextPair:
    kind: Literal["cot", "correction"]
    task: Task
    input: str
    output: str


@dataclass(frozen=True)
class TrainingData:
    examples: list[TextPair]
    sha256: dict[str, str]
    """Digest of every dataset file read, by store key: the manifest records exactly what was trained on."""


def _read_jsonl(
    store: ArtifactStore, key: str, schema: type[CotExample | CorrectionExample]
) -> tuple[list[TextPair], str]:
    try:
        raw = store.get_bytes(key)
    except KeyError as exc:
        raise DataError(f"{store.uri(key)}: dataset file not found (did the pipeline run with this prefix?)") from exc
    kind: Literal["cot", "correction"] = "cot" if schema is CotExample else "correction"
    pairs = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = schema.model_validate_json(line)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<line>'}: {e['msg']}" for e in exc.errors())
            raise DataError(f"{store.uri(key)}:{number}: not a {schema.__name__}: {problems}") from None
        pairs.append(TextPair(kind, record.task, record.input, record.output))
    return pairs, hashlib.sha256(raw).hexdigest()


def load_training_data(store: ArtifactStore, settings: DataSettings, seed: int) -> TrainingData:
    """CoT examples plus corrections in the configured proportion (none for the CoT-only baseline)."""
    cot_key = f"{settings.prefix}/{COT_FILE}"
    cot, cot_digest = _read_jsonl(store, cot_key, CotExample)
    digests = {cot_key: cot_digest}
    corrections: list[TextPair] = []
    if not settings.cot_only:
        corrections_key = f"{settings.prefix}/{CORRECTIONS_FILE}"
        corrections, digests[corrections_key] = _read_jsonl(store, corrections_key, CorrectionExample)
        if settings.corrections_per_cot is not None:
            corrections = _resample(corrections, round(settings.corrections_per_cot * len(cot)), seed)
    examples = cot + corrections
    if not examples:
        raise DataError(f"{store.uri(settings.prefix)}: no training examples in {sorted(digests)}")
    log.info("training data: %d CoT + %d correction examples", len(cot), len(corrections))
    return TrainingData(examples, digests)


def _resample(pairs: list[TextPair], count: int, seed: int) -> list[TextPair]:
    """`count` pairs in a seeded order, cycling through all of them before repeating any."""
    if count and not pairs:
        raise DataError(f"data.corrections_per_cot asks for {count} corrections but the dataset has none")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(count)]


def training_messages(pair: TextPair) -> tuple[ChatMessage, ...]:
    """The prompt of one example as chat messages: the same function frames sampling, evaluation and training."""
    return load_prompt("sample", pair.task).conversation(pair.input, with_examples=pair.kind == "cot")


def _chat(messages: tuple[ChatMessage, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def render_example(tokenizer: Any, pair: TextPair) -> tuple[str, str]:
    """The prompt text and the target text, such that prompt + target is the whole training sequence."""
    if not tokenizer.chat_template:
        raise DataError("the tokenizer has no chat template: lema prompts (and evaluates) models through one")
    messages = _chat(training_messages(pair))
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = {"role": "assistant", "content": pair.output}
    full = tokenizer.apply_chat_template([*messages, answer], tokenize=False)
    if not full.startswith(prompt):
        raise DataError("the tokenizer's chat template renders the prompt differently once an answer follows it")
    return prompt, full[len(prompt) :]


def tokenize_examples(tokenizer: Any, examples: list[TextPair], max_length: int) -> list[dict[str, list[int]]]:
    """`input_ids` and `labels` per example, labels masked on the prompt; targets longer than fit are cut."""
    features = []
    dropped = 0
    for pair in examples:
        prompt, target = render_example(tokenizer, pair)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) >= max_length:
            dropped += 1
            continue
        input_ids = (prompt_ids + target_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
        features.append({"input_ids": input_ids, "labels": labels})
    if dropped:
        log.warning("dropped %d examples whose prompt alone exceeds data.max_length=%d", dropped, max_length)
    if not features:
        raise DataError(f"every example's prompt exceeds data.max_length={max_length}")
    return features
