"""The model being fine-tuned: a base model wrapped with LoRA adapters (QLoRA on a GPU with bitsandbytes).

bf16 on a GPU, fp32 on CPU: CPUs without bf16 units run it emulated and far slower, and the small models trained
on CPU fit in fp32 anyway.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from lema.llm.models import resolve_model_dir
from lema.training.config import LoraSettings, ModelSettings

log = logging.getLogger(__name__)


def use_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def use_4bit(settings: ModelSettings) -> bool:
    return (
        settings.quantize_4bit == "auto"
        and torch.cuda.is_available()
        and importlib.util.find_spec("bitsandbytes") is not None
    )


def load_tokenizer(settings: ModelSettings) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(settings.name, settings.cache_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lora_model(settings: ModelSettings, lora: LoraSettings, zero3: bool = False) -> Any:
    """The base model with trainable LoRA adapters on `lora.target_modules`; every base weight is frozen.

    QLoRA under ZeRO-3 shards the 4-bit weights like any other parameter, which needs them packed in the model's
    dtype (`bnb_4bit_quant_storage`) and every parameter in that one dtype: PEFT's k-bit preparation, which casts
    the unquantized ones to fp32, is then left out."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if use_bf16() else torch.float32
    quantization = None
    if use_4bit(settings):
        quantization = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    model: Any = AutoModelForCausalLM.from_pretrained(
        resolve_model_dir(settings.name, settings.cache_dir), dtype=dtype, quantization_config=quantization
    )
    if quantization is not None and not zero3:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=settings.gradient_checkpointing
        )
    elif settings.gradient_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; they would then skip the backward pass.
        model.enable_input_require_grads()
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA on %s: %d trainable parameters (%s, 4-bit base: %s)", settings.name, trainable, dtype, quantization)
    return model


def merge_adapter(model_name: str, cache_dir: Path | None, adapter_dir: Path, output_dir: Path) -> Path:
    """The base model with the adapter folded into its weights: servable by engines that know nothing of PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_model_dir(model_name, cache_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(output_dir)
    return output_dir
