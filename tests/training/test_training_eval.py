"""`lema eval`: accuracy with its interval on real GSM8K questions, adapters merged in, and paired comparisons."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lema.cli import app
from lema.training.evaluate import (
    Z_95,
    EvalError,
    ItemResult,
    accuracy,
    compare,
    mcnemar_exact,
    read_results,
    tango_interval,
    write_results,
)


def _items(verdicts: str, prefix: str = "q") -> list[ItemResult]:
    return [
        ItemResult(f"{prefix}{i}", "1", "1" if v == "1" else "2", v == "1", "ok", "") for i, v in enumerate(verdicts)
    ]


def test_wilson_interval_matches_known_values() -> None:
    half = accuracy(_items("10" * 10))
    assert half.value == 0.5
    assert (half.low, half.high) == pytest.approx((0.2993, 0.7007), abs=1e-4)
    perfect = accuracy(_items("1" * 20))
    assert perfect.high == 1.0
    assert perfect.low == pytest.approx(0.8389, abs=1e-4)
    assert str(half) == "accuracy 50.0% (10/20), 95% CI [29.9%, 70.1%]"


def test_paired_difference_counts_questions_both_runs_answered() -> None:
    baseline = _items("1100110011")
    candidate = _items("1110111011") + _items("1", prefix="extra")
    result = compare(baseline, candidate)
    assert (result.common, result.gained, result.lost) == (10, 2, 0)
    assert result.difference == pytest.approx(0.2)
    assert result.low < 0.2 < result.high
    assert result.p_value == 0.5  # two discordant pairs, both one way: 2 * (1/2)**2
    with pytest.raises(EvalError, match="share no question ids"):
        compare(baseline, _items("1", prefix="other"))


def test_no_changed_answer_still_leaves_an_honest_interval() -> None:
    result = compare(_items("1100110011" * 5), _items("1100110011" * 5))
    assert result.difference == 0.0 and result.p_value == 1.0
    # Tango's bound with no discordant pair has a closed form, z^2 / (n + z^2): about 7.1 points for 50 questions.
    assert (result.low, result.high) == pytest.approx((-(Z_95**2) / (50 + Z_95**2), Z_95**2 / (50 + Z_95**2)))
    assert "95% CI [-7.1%, +7.1%]" in str(result)


@pytest.mark.parametrize("gained, lost, n", [(5, 2, 100), (9, 1, 30), (0, 4, 12), (12, 0, 12), (3, 3, 7)])
def test_the_interval_is_where_the_score_test_does_not_reject(gained: int, lost: int, n: int) -> None:
    low, high = tango_interval(gained, lost, n)
    estimate = (gained - lost) / n
    assert -1.0 <= low < estimate < high <= 1.0 or (estimate in (-1.0, 1.0) and low < high)
    # Every Δ inside is accepted by the 95% score test and Δ just outside is rejected: the bounds are inverted
    # from the test, not from a normal approximation.
    for bound, step in ((low, -1e-3), (high, 1e-3)):
        if abs(bound) < 1.0:
            assert _score_rejects(gained, lost, n, bound + step)
            assert not _score_rejects(gained, lost, n, bound - step)


def _score_rejects(gained: int, lost: int, n: int, delta: float) -> bool:
    """Tango's score test of Δ, written out independently: maximise the likelihood over P(lost) numerically."""
    import math

    def log_likelihood(q_lost: float) -> float:
        q_gained = q_lost + delta
        same = 1 - q_lost - q_gained
        if min(q_lost, q_gained) <= 0 or same < 0:
            return -math.inf
        return (
            gained * math.log(q_gained)
            + lost * math.log(q_lost)
            + ((n - gained - lost) * math.log(same) if n - gained - lost else 0.0)
        )

    grid = [max(-delta, 0.0) + (1 - abs(delta)) / 2 * i / 20000 for i in range(1, 20000)]
    q_lost = max(grid, key=log_likelihood)
    statistic = (gained - lost - n * delta) / math.sqrt(n * (2 * q_lost + delta * (1 - delta)))
    return abs(statistic) > Z_95


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_exact(5, 2) == pytest.approx(0.453125)  # 2 * (1 + 7 + 21) / 2**7
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(0, 0) == 1.0


def test_results_round_trip_and_bad_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    write_results(path, _items("101"))
    assert read_results(path) == _items("101")
    path.write_text(path.read_text() + '{"question_id": "x"}\n')
    with pytest.raises(EvalError, match=r"results\.jsonl:4: not a lema eval result line"):
        read_results(path)


@pytest.mark.slow
def test_eval_smollm2_on_20_gsm8k_questions(tmp_path: Path, gsm8k_test_file: Path, smollm2_dir: Path) -> None:
    output = tmp_path / "smollm2.jsonl"
    result = CliRunner().invoke(
        app,
        ["eval", "--model", "smollm2-135m", "--data", str(gsm8k_test_file), "--limit", "20",
         "--output", str(output), "--max-tokens", "128", "--batch-size", "20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    match = re.search(r"accuracy (\d+\.\d)% \((\d+)/20\), 95% CI \[(\d+\.\d)%, (\d+\.\d)%\]", result.output)
    assert match, result.output
    value, correct, low, high = float(match[1]), int(match[2]), float(match[3]), float(match[4])
    assert low <= value <= high
    items = read_results(output)
    assert len(items) == 20
    assert sum(item.correct for item in items) == correct
    # The checker's verdicts, not a second opinion: every item carries its reason and the model's response.
    assert all(item.reason and item.response for item in items)


def test_eval_with_adapter_merges_it_and_compares_with_the_base(
    tmp_path: Path, tiny_llama_dir: Path, gsm8k_test_file: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora).save_pretrained(adapter)
    cache = tmp_path / "cache"
    common = ["--data", str(gsm8k_test_file), "--limit", "4", "--max-tokens", "4"]
    runner = CliRunner(env={"LEMA_CACHE_DIR": str(cache)})

    base = runner.invoke(app, ["eval", "--model", str(tiny_llama_dir), "--output", str(tmp_path / "a.jsonl"), *common])
    assert base.exit_code == 0, base.output
    tuned = runner.invoke(
        app,
        ["eval", "--model", str(tiny_llama_dir), "--adapter", str(adapter), "--output", str(tmp_path / "b.jsonl"),
         "--baseline", str(tmp_path / "a.jsonl"), *common],
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    assert "difference " in tuned.output and "on 4 common questions" in tuned.output
    (merged,) = (cache / "merged").iterdir()
    assert json.loads((merged / "config.json").read_text())["hidden_size"] == 64
    assert not (merged / "adapter_config.json").exists()

    compared = runner.invoke(app, ["eval", "compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert compared.exit_code == 0, compared.output
    assert compared.output.count("accuracy ") == 2


def test_eval_through_an_openai_compatible_server_equals_the_local_backend(
    tmp_path: Path, tiny_llama_dir: Path, gsm8k_test_file: Path
) -> None:
    """`--base-url` evaluates whatever serves the OpenAI API (vLLM in a cluster; lema's own server here)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))
    from llm_testing import serving

    from lema.config import LLMSettings
    from lema.llm.factory import create_backend
    from lema.llm.openai_server import create_app

    common = ["--data", str(gsm8k_test_file), "--limit", "3", "--max-tokens", "6"]
    local = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_llama_dir), "--output", str(tmp_path / "a.jsonl"), *common]
    )
    assert local.exit_code == 0, local.output
    served = create_backend(LLMSettings(backend="transformers", model=str(tiny_llama_dir)))
    try:
        with serving(create_app(served)) as url:
            remote = CliRunner().invoke(
                app,
                ["eval", "--base-url", f"{url}/v1", "--model", str(tiny_llama_dir),
                 "--output", str(tmp_path / "b.jsonl"), *common],
            )  # fmt: skip
    finally:
        served.close()
    assert remote.exit_code == 0, remote.output
    assert "(openai)" in remote.output
    assert read_results(tmp_path / "b.jsonl") == read_results(tmp_path / "a.jsonl")


def test_eval_settings_from_a_pipeline_config(tmp_path: Path) -> None:
    from lema.training.evaluate import eval_llm_settings

    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "llms:\n  smollm2: {}\n  big:\n    backend: openai\n    model: qwen\n    base_url: http://127.0.0.1:9/v1\n"
    )
    chosen = eval_llm_settings(model=None, adapter=None, backend="transformers", base_url=None, config=config,
                               llm="big", overrides={})  # fmt: skip
    assert (chosen.backend, chosen.model, chosen.base_url) == ("openai", "qwen", "http://127.0.0.1:9/v1")
    with pytest.raises(EvalError, match=r"no LLM 'small' in llms \(defined: \['big', 'smollm2'\]\)"):
        eval_llm_settings(model=None, adapter=None, backend="transformers", base_url=None, config=config,
                          llm="small", overrides={})  # fmt: skip
    with pytest.raises(EvalError, match="--adapter cannot be merged into a remote server"):
        eval_llm_settings(model="m", adapter=tmp_path, backend="transformers", base_url="http://x/v1", config=None,
                          llm=None, overrides={})  # fmt: skip
