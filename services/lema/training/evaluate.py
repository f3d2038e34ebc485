"""`lema eval`: greedy accuracy of a model (optionally with a trained adapter) on a question file, with its
uncertainty, and the paired difference between two such runs.

Questions are prompted exactly as the sampler prompts them and judged by the pipeline's checker, so an accuracy here
means the same thing as a 'correct' verdict in the dataset. An adapter is merged into the base weights once (cached
by content), so any backend that loads a Hugging Face directory can serve the fine-tuned model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lema.checker import Checker, CheckItem
from lema.config import CheckerSettings
from lema.llm.base import GenerationRequest, LLMBackend
from lema.prompts import PromptTemplate, format_choices, load_prompt
from lema.records import GenerationParams, Question

Z_95 = 1.959964


class EvalError(ValueError):
    """A results file cannot be read or two runs cannot be compared; the message names the file and line."""


@dataclass(frozen=True)
class ItemResult:
    question_id: str
    gold: str
    predicted: str | None
    correct: bool
    reason: str
    response: str


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"accuracy {self.value:.1%} ({self.correct}/{self.total}), 95% CI [{self.low:.1%}, {self.high:.1%}]"


def accuracy(results: Sequence[ItemResult]) -> Accuracy:
    """Accuracy with a Wilson score interval: unlike the normal approximation it stays inside [0, 1] and is honest
    for the small question sets (20-200) that CPU evaluations use."""
    n, k = len(results), sum(r.correct for r in results)
    if n == 0:
        return Accuracy(0, 0, 0.0, 1.0)
    p, z2 = k / n, Z_95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Accuracy(k, n, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Comparison:
    common: int
    baseline: float
    candidate: float
    low: float
    high: float
    gained: int
    lost: int

    @property
    def difference(self) -> float:
        return self.candidate - self.baseline

    def __str__(self) -> str:
        return (
            f"difference {self.difference:+.1%} ({self.candidate:.1%} vs {self.baseline:.1%} on {self.common} "
            f"common questions), 95% CI [{self.low:+.1%}, {self.high:+.1%}]; "
            f"{self.gained} newly right, {self.lost} newly wrong"
        )


def compare(baseline: Sequence[ItemResult], candidate: Sequence[ItemResult]) -> Comparison:
    """Paired difference on the questions both runs answered: each question is its own control, so the interval
    is much tighter than comparing two independent accuracies."""
    before = {r.question_id: r.correct for r in baseline}
    pairs = [(before[r.question_id], r.correct) for r in candidate if r.question_id in before]
    if not pairs:
        raise EvalError("the two runs share no question ids")
    n = len(pairs)
    diffs = [int(after) - int(was) for was, after in pairs]
    mean = sum(diffs) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    return Comparison(
        common=n,
        baseline=sum(was for was, _ in pairs) / n,
        candidate=sum(after for _, after in pairs) / n,
        low=mean - Z_95 * spread,
        high=mean + Z_95 * spread,
        gained=diffs.count(1),
        lost=diffs.count(-1),
    )


def evaluate(
    backend: LLMBackend, questions: Sequence[Question], max_tokens: int, checker: Checker | None = None
) -> list[ItemResult]:
    """Greedy decoding (temperature 0) of every question with the sampler's prompt, judged by the checker."""
    prompts: dict[str, PromptTemplate] = {}
    requests = []
    for question in questions:
        prompt = prompts.setdefault(question.task, load_prompt("sample", question.task))
        messages = prompt.render(question=question.text, choices=format_choices(question.choices))
        requests.append(GenerationRequest(messages, GenerationParams(temperature=0.0, max_tokens=max_tokens)))
    responses = [completions[0].text for completions in backend.generate(requests)]
    checked = (checker or Checker(CheckerSettings())).check_batch(
        [CheckItem(text, q.gold, q.task) for text, q in zip(responses, questions, strict=True)]
    )
    return [
        ItemResult(q.id, q.gold, result.predicted, result.correct, result.reason, text)
        for q, text, result in zip(questions, responses, checked, strict=True)
    ]


def write_results(path: Path, results: Sequence[ItemResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in results))


def read_results(path: Path) -> list[ItemResult]:
    results = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise EvalError(f"{path}: cannot read results: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            results.append(ItemResult(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise EvalError(f"{path}:{number}: not a lema eval result line: {exc}") from None
    return results


def merged_model_dir(model: str, adapter: Path, cache_dir: Path | None) -> Path:
    """`model` with `adapter` merged in, cached under the lema cache by the adapter's content and the base's name."""
    from lema.llm.models import cache_root
    from lema.training.model import merge_adapter

    if not (adapter / "adapter_config.json").is_file():
        raise EvalError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    digest = hashlib.sha256(model.encode())
    for file in sorted(p for p in adapter.rglob("*") if p.is_file()):
        digest.update(file.relative_to(adapter).as_posix().encode() + file.read_bytes())
    target = cache_root(cache_dir) / "merged" / digest.hexdigest()[:16]
    if not (target / "config.json").is_file():
        staging = target.with_name(f".{target.name}.partial")
        merge_adapter(model, cache_dir, adapter, staging)
        staging.replace(target)
    return target
