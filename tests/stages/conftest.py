"""A rule-driven LLM for stage-logic tests: it answers each request with a function of its last user message.

The real SmolLM2 backend runs in the end-to-end tests; these tests need outputs they can choose (a vote that splits,
a correction that fails to parse), which no real model gives on demand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from lema.llm.base import Completion, GenerationRequest, TokenUsage


class RuleBackend:
    def __init__(self, rule: Callable[[str, int], str], model: str = "rule-llm") -> None:
        self.rule = rule
        self._model = model
        self._usage = TokenUsage()
        self.calls: list[GenerationRequest] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def usage(self) -> TokenUsage:
        return self._usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.calls.extend(requests)
        out = []
        for request in requests:
            prompt = request.messages[-1].content
            texts = [self.rule(prompt, request.params.seed + i) for i in range(request.n)]
            completions = [Completion(t, len(prompt.split()), len(t.split())) for t in texts]
            self._usage.add(completions, 0.0)
            out.append(completions)
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def rule_llm() -> Callable[..., RuleBackend]:
    return RuleBackend
