"""Fixtures for the training tests: a tiny Llama built from a config, and LEMA datasets made from GSM8K lines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lema.records import CorrectionExample, CotExample, Question
from lema.store import LocalStore

DATA_PREFIX = "run1"


def gsm8k_rows(path: Path, count: int) -> list[dict[str, str]]:
    rows = []
    with path.open() as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == count:
                break
    return rows


def _wrong_first_step(solution: str) -> tuple[str, str]:
    """The gold solution with the first step's result off by one: a mistake the corrector should find in step 1."""
    steps = solution.split("\n")
    numbers = re.findall(r"\d+", steps[0])
    wrong = str(int(numbers[-1]) + 1) if numbers else "0"
    steps[0] = re.sub(r"\d+(?!.*\d)", wrong, steps[0])
    return "\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, start=1)), wrong


def lema_examples(rows: list[dict[str, str]]) -> tuple[list[CotExample], list[CorrectionExample]]:
    """One CoT example (the gold solution) and one correction example per GSM8K row."""
    cot, corrections = [], []
    for row in rows:
        reasoning, _, gold = row["answer"].rpartition("####")
        gold, reasoning = gold.strip(), re.sub(r"<<[^>]*>>", "", reasoning.strip())
        question = Question.create(row["question"], gold, "gsm8k", "gsm8k_train.jsonl")
        solution = f"{reasoning}\nThe answer is {gold}."
        cot.append(
            CotExample(
                id=f"cot-{question.id}", question_id=question.id, task="gsm8k", source="gold", model=None,
                round=0, input=question.text, output=solution, answer=gold,
            )
        )  # fmt: skip
        wrong_solution, wrong_answer = _wrong_first_step(reasoning)
        explanation = "The result of the first calculation is wrong, so every later step inherits the error."
        corrections.append(
            CorrectionExample(
                id=f"corr-{question.id}", question_id=question.id, path_id=f"p-{question.id}", task="gsm8k",
                round=0, question=question.text, wrong_solution=wrong_solution, wrong_answer=wrong_answer,
                incorrect_step=1, explanation=explanation, corrected_solution=solution, answer=gold,
                sampler_model="smollm2-135m", corrector_model="smollm2-135m", prompt_version="correct-v1",
                input=f"Question: {question.text}\nAnswer:\n{wrong_solution}\nFind the first incorrect step.",
                output=f"Incorrect Step: Step 1.\nExplanation: {explanation}\nCorrect Solution:\n{solution}",
            )
        )  # fmt: skip
    return cot, corrections


def write_datasets(store: LocalStore, prefix: str, cot: list[CotExample], corrections: list[CorrectionExample]) -> None:
    store.put_bytes(f"{prefix}/cot.jsonl", "".join(e.model_dump_json() + "\n" for e in cot).encode())
    store.put_bytes(f"{prefix}/corrections.jsonl", "".join(e.model_dump_json() + "\n" for e in corrections).encode())


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from lema.llm.models import resolve_model_dir

    return resolve_model_dir("smollm2-135m")


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_small_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with ChatML special tokens, trained offline on `texts` in about a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, gsm8k_train_file: Path) -> Path:
    """A 2-layer Llama with hidden size 64 and a 512-token vocabulary, randomly initialised (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = gsm8k_rows(gsm8k_train_file, 300)
    tokenizer = train_small_tokenizer([row["question"] + "\n" + row["answer"] for row in rows], vocab_size=512)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def gsm8k_examples(gsm8k_train_file: Path) -> tuple[list[CotExample], list[CorrectionExample]]:
    return lema_examples(gsm8k_rows(gsm8k_train_file, 24))
