"""Settings of a fine-tuning run: one frozen model, loaded like every other lema config (YAML, then env, then --set).

The same file drives `lema train` on a laptop and the pod that `lema train submit` starts, so everything the job
needs to find its data, resume and report lives here; the `submit` section only matters to the launcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lema.config import FileSettings, Section, StoreSettings, load_settings

ENV_PREFIX = "LEMA_TRAIN_"


class ModelSettings(Section):
    name: str = Field("smollm2-135m", description="A Hugging Face model directory, or the 'smollm2-135m' alias.")
    cache_dir: Path | None = Field(None, description="Where the alias is converted to; default ~/.cache/lema.")
    quantize_4bit: Literal["auto", "never"] = Field(
        "auto", description="QLoRA: load the base in 4 bits when a GPU and bitsandbytes are present."
    )
    gradient_checkpointing: bool = False


class LoraSettings(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DataSettings(Section):
    prefix: str = Field("lema", description="Run prefix in the store holding cot.jsonl and corrections.jsonl.")
    cot_only: bool = Field(False, description="Train on CoT data alone: the baseline of the LEMA ablations.")
    corrections_per_cot: float | None = Field(
        None, ge=0.0, description="Correction examples per CoT example; None uses every correction once."
    )
    max_length: int = Field(1024, gt=8, description="Tokens per example; longer targets are cut at the end.")


class OptimSettings(Section):
    max_steps: int = Field(-1, description="Optimizer steps; -1 trains for `epochs` instead.")
    epochs: float = Field(3.0, gt=0.0)
    batch_size: int = Field(4, gt=0, description="Examples per device per micro-step.")
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    group_by_length: bool = Field(True, description="Batch examples of similar length to waste less padding.")
    logging_steps: int = Field(10, gt=0)


class DeepSpeedSettings(Section):
    config: Path | None = Field(
        Path("training_job/ds_zero2.json"), description="A DeepSpeed JSON config (ZeRO-2/3 ship in training_job/)."
    )
    offload: bool = Field(False, description="Offload optimizer state (and ZeRO-3 parameters) to CPU memory.")
    cpu_shm_comm: bool = Field(
        False, description="CPU ranks all-reduce through DeepSpeed's shared-memory op (compiled on first use, ~3 min)."
    )


class CheckpointSettings(Section):
    prefix: str = Field("lema/train", description="Store prefix for checkpoints, the adapter and the manifest.")
    every_steps: int = Field(100, gt=0)
    keep: int = Field(2, gt=0, description="Checkpoints kept in the store; older ones are deleted.")
    resume: bool = Field(True, description="Continue from the latest complete checkpoint in the store.")
    on_change: Literal["refuse", "new_run"] = Field(
        "refuse",
        description="When the prefix holds a run with other settings, data or world size: refuse to start, or "
        "start fresh under `<prefix>-<fingerprint>` (`lema train --new-run`).",
    )
    merge_weights: bool = Field(False, description="Also save the base model with the adapter merged in.")


class MetricsSettings(Section):
    port: int | None = Field(None, ge=0, lt=65536, description="Serve /metrics on this port (rank 0).")
    pushgateway: str | None = Field(None, description="Push to this Pushgateway (host:port or URL) at each log.")
    job: str = Field("lema-train", description="Pushgateway job label.")


class SubmitSettings(Section):
    """How `lema train submit` runs this config in a cluster."""

    kind: Literal["job", "pytorchjob"] = Field("job", description="batch/v1 Job, or Kubeflow PyTorchJob (multi-node).")
    name: str = Field("lema-train", description="Job name; must be unique in the namespace.")
    namespace: str = "default"
    image: str = Field(
        "lema-trainer:0.1.0", description="The trainer image (docker/trainer.Dockerfile), not the service image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: tuple[str, ...] = ("python", "training_job/train.py")
    config_path: str = Field("/etc/lema/train.yaml", description="Where the pod finds this config (a ConfigMap).")
    nodes: int = Field(1, gt=0, description="Pods for a PyTorchJob: one master and nodes-1 workers.")
    gpus: int = Field(1, ge=0, description="nvidia.com/gpu per pod; requests always equal limits.")
    cpu: str = "4"
    memory: str = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(
        default_factory=dict, description="ENV_NAME: 'secret-name/key', read from Kubernetes Secrets."
    )
    service_account: str | None = None
    backoff_limit: int = Field(3, ge=0, description="Retries of a failed pod; each resumes from the store.")
    active_deadline_seconds: int = Field(
        172800, gt=0, description="The Job fails once it has run this long, retries included (default two days)."
    )
    unschedulable_seconds: float = Field(
        900.0, gt=0.0, description="Stop following a pod that no node could take for this long (autoscalers need some)."
    )
    ttl_seconds_after_finished: int = Field(86400, ge=0)
    poll_seconds: float = Field(10.0, gt=0.0)

    @model_validator(mode="after")
    def _secret_refs_name_a_key(self) -> SubmitSettings:
        for env_name, ref in self.secret_env.items():
            if ref.count("/") != 1 or not all(ref.split("/")):
                raise ValueError(f"secret_env.{env_name}: expected 'secret-name/key', got {ref!r}")
        return self


class TrainRunSettings(Section):
    name: str = "lema-train"
    seed: int = 1234
    work_dir: Path = Field(Path("runs/train"), description="Local scratch for checkpoints before upload.")


class TrainSettings(FileSettings):
    run: TrainRunSettings = TrainRunSettings()
    model: ModelSettings = ModelSettings()
    lora: LoraSettings = LoraSettings()
    data: DataSettings = DataSettings()
    optim: OptimSettings = OptimSettings()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    metrics: MetricsSettings = MetricsSettings()
    store: StoreSettings = StoreSettings()
    submit: SubmitSettings = SubmitSettings()


def load_train_settings(path: Path | None, overrides: list[str] | None = None) -> TrainSettings:
    return load_settings(path, overrides, settings_cls=TrainSettings, env_prefix=ENV_PREFIX)
