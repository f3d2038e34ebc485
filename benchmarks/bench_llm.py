"""Tokens per second of the embedded transformers backend at batch 1, 4 and 16, against raw `model.generate`.

Both sides get the same chat-formatted GSM8K questions, the same sampling settings and the same token budget, in the
same process and run, so machine load weighs on both alike. Greedy decoding produces identical tokens on both sides,
which makes it the exact comparison; sampled decoding adds the backend's per-row seeded sampling against transformers'
own (shared-generator) sampling. Ratio = backend tokens/s / raw tokens/s.

    python benchmarks/bench_llm.py [--batch-sizes 1,4,16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lema.config import LLMSettings
from lema.llm.base import ChatMessage, GenerationRequest
from lema.llm.models import resolve_model_dir
from lema.llm.transformers_backend import TransformersBackend
from lema.records import GenerationParams

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MODES = {
    "greedy": GenerationParams(temperature=0.0),
    "sampled": GenerationParams(temperature=0.7, top_p=0.95),
}


def questions(path: Path, count: int) -> list[str]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line)["question"] for line, _ in zip(lines, range(count), strict=False)]


def backend_tokens_per_s(backend: TransformersBackend, prompts: list[str], params: GenerationParams) -> float:
    requests = [
        GenerationRequest(messages=(ChatMessage("user", prompt),), params=params.model_copy(update={"seed": i}))
        for i, prompt in enumerate(prompts)
    ]
    started = time.perf_counter()
    results = backend.generate(requests)
    seconds = time.perf_counter() - started
    return sum(samples[0].completion_tokens for samples in results) / seconds


def raw_tokens_per_s(model: Any, tokenizer: Any, prompts: list[str], params: GenerationParams) -> float:
    chats = [[{"role": "user", "content": prompt}] for prompt in prompts]
    texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    encoded = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        if params.temperature > 0
        else {"do_sample": False}
    )
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **encoded, max_new_tokens=params.max_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
        )
    seconds = time.perf_counter() - started
    generated = output[:, encoded["input_ids"].shape[1] :]
    return sum(_length_until_eos(row.tolist(), tokenizer.eos_token_id) for row in generated) / seconds


def _length_until_eos(tokens: list[int], eos: int) -> int:
    return tokens.index(eos) + 1 if eos in tokens else len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--questions", type=Path, default=EXAMPLE_DATA / "gsm8k_test.jsonl")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="Model cache; default $LEMA_CACHE_DIR or ~/.cache/lema"
    )
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]

    settings = LLMSettings(model="smollm2-135m", cache_dir=args.cache_dir, batch_size=max(batch_sizes))
    backend = TransformersBackend(settings)
    model_dir = resolve_model_dir(settings.model, settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = questions(args.questions, max(batch_sizes))
    backend_tokens_per_s(backend, prompts[:2], MODES["greedy"].model_copy(update={"max_tokens": 8}))  # warm-up
    raw_tokens_per_s(model, tokenizer, prompts[:2], MODES["greedy"].model_copy(update={"max_tokens": 8}))

    print(f"SmolLM2-135M float32, {torch.get_num_threads()} threads, {args.max_tokens} new tokens at most per row")
    print(f"{'mode':<8} {'batch':>5} {'backend tok/s':>14} {'raw tok/s':>10} {'ratio':>6}")
    for mode, mode_params in MODES.items():
        params = mode_params.model_copy(update={"max_tokens": args.max_tokens})
        for size in batch_sizes:
            ours = backend_tokens_per_s(backend, prompts[:size], params)
            raw = raw_tokens_per_s(model, tokenizer, prompts[:size], params)
            print(f"{mode:<8} {size:>5} {ours:>14.1f} {raw:>10.1f} {ours / raw:>6.2f}")


if __name__ == "__main__":
    main()
