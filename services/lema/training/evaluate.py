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
from typing import Any

from lema.checker import Checker, CheckItem
from lema.config import CheckerSettings, LLMSettings
from lema.llm.base import GenerationRequest, LLMBackend
from lema.prompts import format_choices, load_prompt
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
    """Two runs on the same questions. `gained`/`lost`: questions only the candidate / only the baseline got right;
    the questions both got right or both got wrong say nothing about which run is better."""

    common: int
    baseline: float
    candidate: float
    low: float
    high: float
    gained: int
    lost: int
    p_value: float

    @property
    def difference(self) -> float:
        return self.candidate - self.baseline

    def __str__(self) -> str:
        return (
            f"difference {self.difference:+.1%} ({self.candidate:.1%} vs {self.baseline:.1%} on {self.common} "
            f"common questions), 95% CI [{self.low:+.1%}, {self.high:+.1%}] (Tango score); "
            f"{self.gained} newly right, {self.lost} newly wrong, exact McNemar p = {self.p_value:.3g}"
        )


def compare(baseline: Sequence[ItemResult], candidate: Sequence[ItemResult]) -> Comparison:
    """Paired difference on the questions both runs answered: each question is its own control, so the interval
    is much tighter than comparing two independent accuracies."""
    before = {r.question_id: r.correct for r in baseline}
    pairs = [(before[r.question_id], r.correct) for r in candidate if r.question_id in before]
    if not pairs:
        raise EvalError("the two runs share no question ids")
    n = len(pairs)
    gained = sum(1 for was, now in pairs if now and not was)
    lost = sum(1 for was, now in pairs if was and not now)
    low, high = tango_interval(gained, lost, n)
    return Comparison(
        common=n,
        baseline=sum(was for was, _ in pairs) / n,
        candidate=sum(now for _, now in pairs) / n,
        low=low,
        high=high,
        gained=gained,
        lost=lost,
        p_value=mcnemar_exact(gained, lost),
    )


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test: under 'no difference' each discordant question is a fair coin flip, so the
    p-value is a binomial tail. Exact, hence valid for the handful of discordant pairs small evaluations give."""
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail: float = sum(math.comb(discordant, k) for k in range(min(gained, lost) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def tango_interval(gained: int, lost: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Tango's (1998) score interval for a paired difference of proportions, Δ = (gained - lost) / n: every Δ the
    score test does not reject. Unlike the Wald interval it is never zero-width (no change in 50 questions still
    leaves about ±7%) and stays inside [-1, 1]; each bound is found by bisection on the monotone statistic."""
    estimate = (gained - lost) / n

    def score(delta: float) -> float:
        # The constrained maximum-likelihood estimate of P(lost) given Δ (Tango's closed form), then the statistic.
        a, b = 2 * n, -gained - lost + (2 * n - gained + lost) * delta
        c = -lost * delta * (1 - delta)
        q_lost = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)
        variance = n * (2 * q_lost + delta * (1 - delta))
        centred = gained - lost - n * delta
        if centred == 0:
            return 0.0
        return centred / math.sqrt(variance) if variance > 0 else math.copysign(math.inf, centred)

    def bound(inside: float, outside: float, critical: float) -> float:
        """The Δ between `inside` (not rejected) and `outside` where the statistic crosses `critical`."""
        if abs(score(outside)) <= abs(critical):
            return outside
        for _ in range(100):
            middle = (inside + outside) / 2
            if (score(middle) - critical) * (score(inside) - critical) > 0:
                inside = middle
            else:
                outside = middle
        return (inside + outside) / 2

    return bound(estimate, -1.0, z), bound(estimate, 1.0, -z)


def evaluate(
    backend: LLMBackend, questions: Sequence[Question], max_tokens: int, checker: Checker | None = None
) -> list[ItemResult]:
    """Greedy decoding (temperature 0) of every question with the sampler's prompt, judged by the checker."""
    requests = []
    for question in questions:
        prompt = load_prompt("sample", question.task)
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


def eval_llm_settings(
    *,
    model: str | None,
    adapter: Path | None,
    backend: str,
    base_url: str | None,
    config: Path | None,
    llm: str | None,
    overrides: dict[str, Any],
) -> LLMSettings:
    """The LLM to evaluate: an entry of a pipeline config's `llms` table (`--config` + `--llm`), an OpenAI-compatible
    server (`--base-url`), or a local backend; `--model` names the model in each, `--adapter` is merged into it."""
    if (config is None) != (llm is None):
        raise EvalError("--config and --llm go together: the config's `llms` table names the LLM to evaluate")
    if config is not None and llm is not None:
        from lema.config import LemaSettings, load_settings

        table = load_settings(config, [], settings_cls=LemaSettings).llms
        if llm not in table:
            raise EvalError(f"{config}: no LLM {llm!r} in llms (defined: {sorted(table)})")
        fields = table[llm].model_dump()
    elif base_url is not None:
        fields = {"backend": "openai", "base_url": base_url, **overrides}
    else:
        fields = {"backend": backend, **overrides}
    if model is not None:
        fields["model"] = model
    if "model" not in fields:
        raise EvalError("lema eval needs --model (or --config with --llm)")
    if adapter is not None:
        if fields["backend"] == "openai":
            raise EvalError("--adapter cannot be merged into a remote server: serve the merged model, then --base-url")
        fields["model"] = str(merged_model_dir(fields["model"], adapter, fields.get("cache_dir")))
    return LLMSettings.model_validate(fields)


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
