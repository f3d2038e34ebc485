"""Embedded pipeline throughput as a ratio to raw `model.generate` on the same prompts (target >= 0.9).

One run, one machine: the pipeline (sample -> check -> correct -> verify, evolution off) runs on GSM8K test
questions with SmolLM2-135M; every request it sends is captured, then replayed through plain `model.generate` with
the same batch size and sampling settings. Both are reported as generated tokens per second of wall time, so the
ratio is what the pipeline's own work (prompting, checking, parsing, journaling, bookkeeping) costs.

    python benchmarks/bench_pipeline.py [--questions 16] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lema.config import LemaSettings, LLMSettings, load_settings
from lema.llm.base import Completion, GenerationRequest, LLMBackend, TokenUsage
from lema.llm.factory import create_backend
from lema.llm.models import resolve_model_dir
from lema.runtime.embedded import EmbeddedPipeline

EXAMPLE_QUESTIONS = Path(__file__).resolve().parents[1] / "examples" / "data" / "gsm8k_test.jsonl"


class Capturing:
    """Passes requests through to the real backend and keeps them for the raw replay."""

    def __init__(self, inner: LLMBackend) -> None:
        self.inner = inner
        self.requests: list[GenerationRequest] = []

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def usage(self) -> TokenUsage:
        return self.inner.usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.requests.extend(requests)
        return self.inner.generate(requests)

    def close(self) -> None:
        self.inner.close()


def pipeline_run(settings: LemaSettings, backend: Capturing) -> tuple[float, int]:
    with EmbeddedPipeline(settings, backend_factory=lambda name, _: backend) as pipeline:
        questions = pipeline.load_questions()
        start = time.perf_counter()
        pipeline.run(questions)
        seconds = time.perf_counter() - start
    return seconds, backend.usage.completion_tokens


def raw_generate(requests: Sequence[GenerationRequest], batch_size: int) -> tuple[float, int]:
    model_dir = resolve_model_dir("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in r.messages], tokenize=False, add_generation_prompt=True
        )
        for r in requests
    ]
    generated = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(requests), batch_size):
            chunk = requests[i : i + batch_size]
            inputs = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
            params = chunk[0].params
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            output = model.generate(
                **inputs,
                max_new_tokens=max(r.params.max_tokens for r in chunk),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                **(sampling if params.temperature > 0 else {"do_sample": False}),
            )
            new = output[:, inputs["input_ids"].shape[1] :]
            generated += int((new != (tokenizer.pad_token_id or tokenizer.eos_token_id)).sum())
    return time.perf_counter() - start, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            None,
            [
                f"run.work_dir={tmp}/work",
                f"store.root={tmp}/store",
                f"input.path={EXAMPLE_QUESTIONS}",
                f"input.limit={args.questions}",
                f"llms.smollm2.batch_size={args.batch_size}",
                f"sample.batch_size={args.batch_size}",
                f"correct.batch_size={args.batch_size}",
                f"sample.params.max_tokens={args.max_tokens}",
                f"correct.params.max_tokens={args.max_tokens}",
                "evolve.enabled=false",
            ],
        )
        backend = Capturing(create_backend(LLMSettings(batch_size=args.batch_size)))
        pipeline_s, pipeline_tokens = pipeline_run(settings, backend)
    raw_s, raw_tokens = raw_generate(backend.requests, args.batch_size)
    pipeline_rate, raw_rate = pipeline_tokens / pipeline_s, raw_tokens / raw_s
    print(f"requests: {len(backend.requests)}  batch size: {args.batch_size}  max tokens: {args.max_tokens}")
    print(f"embedded pipeline : {pipeline_tokens:6d} tokens in {pipeline_s:7.2f} s = {pipeline_rate:7.1f} tokens/s")
    print(f"raw model.generate: {raw_tokens:6d} tokens in {raw_s:7.2f} s = {raw_rate:7.1f} tokens/s")
    print(f"ratio pipeline / raw generate: {pipeline_rate / raw_rate:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
