"""The embedded default backend: a Hugging Face causal LM on the CPU (or one GPU), batched with left padding.

Rows of one prompt template share its fixed part (the system message and few-shot turns, ~80% of a correction
prompt's tokens): a batch computes that part's attention cache once and every row continues from it, so concurrent
requests cost little more prompt work than one. A row computes the same whether it is alone or in a batch.

Each sampled row draws its randomness from its own `torch.Generator` seeded with `params.seed + i`, and decoding is
greedy over the row's own noisy scores (the Gumbel-max trick), so a completion depends on its request alone: the same
request gives the same text alone or inside any batch, which lets a resumed run or another worker reproduce it.
Temperature 0 is plain greedy decoding.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lema.config import LLMSettings
from lema.llm.base import ChatMessage, Completion, GenerationRequest, LLMError, TokenUsage
from lema.llm.models import resolve_model_dir
from lema.records import GenerationParams

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class _Row:
    """One sequence to generate: sample `sample` of request `request`."""

    request: int
    sample: int
    prompt: list[int]
    params: GenerationParams
    fixed: int = 0
    """How many leading prompt tokens are the template's fixed part, shared with the other rows of its batch."""

    @property
    def fixed_part(self) -> list[int]:
        return self.prompt[: self.fixed]


class TransformersBackend:
    def __init__(self, settings: LLMSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        if "OMP_NUM_THREADS" not in os.environ:
            # torch defaults to physical cores, which leaves hyper-threaded CI machines half idle.
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        model_dir = resolve_model_dir(settings.model, settings.cache_dir)
        self._settings = settings
        self._device = torch.device(settings.device)
        self._tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        # from_pretrained returns the model in eval mode.
        self._model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=_dtype(settings, self._device), device_map=settings.device
        )
        self._eos_ids = _eos_ids(self._tokenizer, self._model)
        pad_id = self._tokenizer.pad_token_id
        self._pad_id: int = min(self._eos_ids) if pad_id is None else pad_id
        # Only what the request says may shape its tokens: a model directory's own sampling defaults (repetition
        # penalty, temperature, ...) would otherwise be merged into every generate call.
        self._model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            bos_token_id=self._tokenizer.bos_token_id, eos_token_id=sorted(self._eos_ids), pad_token_id=self._pad_id
        )
        self._usage = TokenUsage()
        self._lock = threading.Lock()
        self._fixed_ids = functools.lru_cache(maxsize=64)(self._tokenize_fixed_part)

    @property
    def model(self) -> str:
        return self._settings.model

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        rows = [
            _Row(index, sample, prompt, request.params, self._fixed_length(request, prompt))
            for index, request in enumerate(requests)
            for prompt in [self._prompt_ids(request)]
            for sample in range(request.n)
        ]
        # One template's rows and similar lengths share a batch, to share its fixed part and waste less on padding;
        # results do not depend on the grouping.
        rows.sort(key=lambda row: (row.fixed_part, len(row.prompt)))
        finished: dict[tuple[int, int], Completion] = {}
        started = time.perf_counter()
        with self._lock, self._usage.busy():
            for batch in _batches(rows, self._settings.batch_size):
                for row, completion in zip(batch, self._generate_batch(batch), strict=True):
                    finished[row.request, row.sample] = completion
        share = (time.perf_counter() - started) / max(len(requests), 1)
        results = [[finished[index, sample] for sample in range(request.n)] for index, request in enumerate(requests)]
        for completions in results:
            self._usage.add(completions, share)
        return results

    def close(self) -> None:
        """Nothing to release beyond memory, which goes with the object."""

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        ids: list[int] = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        return ids

    def _fixed_length(self, request: GenerationRequest, prompt: list[int]) -> int:
        """The length of the template's fixed part of `prompt`: every message before the last, when they tokenize
        to a prefix of the whole prompt (0 otherwise, or for a single message)."""
        if len(request.messages) < 2:
            return 0
        fixed = self._fixed_ids(request.messages[:-1])
        return len(fixed) if len(fixed) < len(prompt) and prompt[: len(fixed)] == fixed else 0

    def _tokenize_fixed_part(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        ids: list[int] = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=False
        )["input_ids"]
        return ids

    def _generate_batch(self, rows: list[_Row]) -> list[Completion]:
        """Each row is the shared fixed part, left padding, then the row's own tokens; the fixed part's attention
        cache is computed once, for one row, and copied to every row."""
        import torch
        from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList

        fixed = rows[0].fixed_part
        width = len(fixed) + max(len(row.prompt) - len(fixed) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            own = row.prompt[len(fixed) :]
            input_ids[i, : len(fixed)] = torch.tensor(fixed, dtype=torch.long)
            input_ids[i, width - len(own) :] = torch.tensor(own)
            attention_mask[i, : len(fixed)] = 1
            attention_mask[i, width - len(own) :] = 1
        with torch.inference_mode():
            cache = None
            if fixed:
                cache = DynamicCache(config=self._model.config)
                self._model(input_ids=torch.tensor([fixed], device=self._device), cache=cache, logits_to_keep=1)
                cache.batch_repeat_interleave(len(rows))
            output = self._model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                cache=cache,
                do_sample=False,
                max_new_tokens=max(row.params.max_tokens for row in rows),
                logits_processor=LogitsProcessorList([_SeededSampling(rows)]),
                stopping_criteria=StoppingCriteriaList([_RowLimits(rows, width, self._tokenizer)]),
            )
        return [self._completion(row, output[i, width:].tolist()) for i, row in enumerate(rows)]

    def _completion(self, row: _Row, generated: list[int]) -> Completion:
        tokens = generated[: row.params.max_tokens]
        ended = next((i for i, token in enumerate(tokens) if token in self._eos_ids), None)
        if ended is not None:
            tokens = tokens[: ended + 1]
        text, stopped = truncate_at_stop(self._tokenizer.decode(tokens, skip_special_tokens=True), row.params.stop)
        finished = ended is not None or stopped
        return Completion(
            text=text,
            prompt_tokens=len(row.prompt),
            completion_tokens=len(tokens),
            finish_reason="stop" if finished else "length",
        )


def _batches(rows: list[_Row], size: int) -> Iterator[list[_Row]]:
    """Consecutive rows, at most `size` at a time, a new batch wherever the fixed part changes."""
    batch: list[_Row] = []
    for row in rows:
        if batch and (len(batch) == size or row.fixed_part != batch[0].fixed_part):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _dtype(settings: LLMSettings, device: torch.device) -> torch.dtype:
    """float32 on the CPU (fast there, and exact enough to keep batch independence), bfloat16 on a GPU."""
    import torch

    if settings.dtype != "auto":
        dtype: torch.dtype = getattr(torch, settings.dtype)
        return dtype
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise LLMError(f"model {model.name_or_path!r}: neither its tokenizer nor its generation config names an EOS")
    return ids


class _SeededSampling:
    """Temperature and top-p per row, then Gumbel noise from the row's own generator; greedy rows pass unchanged.

    `argmax(logits / T + Gumbel noise)` is an exact draw from `softmax(logits / T)`, so greedy decoding over these
    scores samples, while each row's noise depends only on its seed and how many tokens it has generated.
    """

    def __init__(self, rows: list[_Row]) -> None:
        import torch

        self._generators = [
            torch.Generator().manual_seed(row.params.seed + row.sample) if row.params.temperature > 0 else None
            for row in rows
        ]
        self._sampled = torch.tensor([g is not None for g in self._generators])
        self._temperatures = torch.tensor([row.params.temperature or 1.0 for row in rows])[:, None]
        # top_p = 1 keeps every token; comparing cumulative sums against it would drop tail tokens to rounding.
        self._top_ps = torch.tensor([row.params.top_p if row.params.top_p < 1.0 else 2.0 for row in rows])[:, None]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if not self._sampled.any():
            return scores
        device = scores.device
        logits = _nucleus(scores / self._temperatures.to(device), self._top_ps.to(device))
        uniform = torch.stack(
            [
                torch.rand(scores.shape[-1], generator=g) if g is not None else torch.full((scores.shape[-1],), 0.5)
                for g in self._generators
            ]
        ).to(device)
        noisy = logits - torch.log(-torch.log(uniform))
        return torch.where(self._sampled.to(device)[:, None], noisy, scores)


def _nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Each row of `logits` with the tokens outside its smallest set reaching probability `top_p` set to -inf."""
    import torch

    ordered, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    outside = torch.cumsum(probs, dim=-1) - probs >= top_p
    outside[:, 0] = False
    return logits.masked_fill(torch.empty_like(outside).scatter_(-1, order, outside), float("-inf"))


class _RowLimits:
    """Per-row stopping: a row is done at its own `max_tokens` or once its text contains one of its stop strings."""

    def __init__(self, rows: list[_Row], prompt_width: int, tokenizer: Any) -> None:
        self._rows = rows
        self._prompt_width = prompt_width
        self._tokenizer = tokenizer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        generated = input_ids[:, self._prompt_width :]
        done = [
            generated.shape[1] >= row.params.max_tokens
            or (
                bool(row.params.stop)
                and truncate_at_stop(self._tokenizer.decode(generated[i], skip_special_tokens=True), row.params.stop)[1]
            )
            for i, row in enumerate(self._rows)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
