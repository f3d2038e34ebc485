"""`lema eval`: accuracy with its interval on real GSM8K questions, adapters merged in, and paired comparisons."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lema.cli import app
from lema.training.evaluate import EvalError, ItemResult, accuracy, compare, read_results, write_results


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
    with pytest.raises(EvalError, match="share no question ids"):
        compare(baseline, _items("1", prefix="other"))


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
