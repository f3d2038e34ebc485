"""Typed settings: one frozen model, read from a YAML file, then `LEMA_*` environment variables, then CLI overrides.

Precedence (highest first): `--set a.b=value` overrides > environment (`LEMA_SAMPLE__TEMPERATURE=0.5`) > YAML file >
defaults. Every stage names its own LLM from the `llms` table, because LEMA samples with several models and corrects
with a stronger one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lema.records import GenerationParams, Task


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the field."""


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LLMSettings(Section):
    backend: Literal["transformers", "openai", "vllm", "replay"] = "transformers"
    model: str = Field("smollm2-135m", description="Model name, local path, or the 'smollm2-135m' built-in alias.")
    # transformers / vllm
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(8, gt=0, description="Sequences per forward pass (transformers).")
    cache_dir: Path | None = Field(None, description="Where converted weights are cached; default ~/.cache/lema.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra vllm.LLM(...) arguments.")
    # openai-compatible HTTP
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the env var holding the key; never the key.")
    max_concurrency: int = Field(8, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    retry_window_s: float = Field(
        300.0, ge=0, description="How long a request is retried after a 429, 5xx, timeout or refused connection."
    )
    retry_backoff_s: float = Field(0.5, gt=0, description="Backoff ceiling of the first retry; doubles each retry.")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="Cap on one backoff, Retry-After included.")
    # replay: recorded completions, for benchmarks and tests of the transport without an LLM
    recording: Path | None = None


class RunSettings(Section):
    name: str = Field(
        "lema", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run id: the dataset's store prefix."
    )
    work_dir: Path = Field(Path("runs/.work"), description="Local scratch: the LLM completion journal for resume.")
    prompts_dir: Path | None = Field(None, description="Prompt templates overriding the packaged ones.")


class InputSettings(Section):
    path: str = Field("examples/data/demo_problems.jsonl", description="A JSONL file, or hf://NAME[:SPLIT] online.")
    format: Literal["auto", "gsm8k", "math", "lema", "mcq"] = "auto"
    task: Task | None = Field(None, description="Task of the questions; inferred from the format when omitted.")
    limit: int | None = Field(None, gt=0)


class SampleSettings(Section):
    models: tuple[str, ...] = ("smollm2",)
    samples_per_model: int = Field(2, gt=0)
    params: GenerationParams = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=256)
    batch_size: int = Field(16, gt=0, description="Questions handed to a backend at once.")


class CorrectSettings(Section):
    model: str = "smollm2"
    params: GenerationParams = GenerationParams(temperature=0.0, max_tokens=384)
    show_gold: bool = Field(False, description="Tell the corrector the gold answer (helps weak correctors).")
    batch_size: int = Field(8, gt=0)


class EvolveSettings(Section):
    enabled: bool = True
    model: str = "smollm2"
    answer_models: tuple[str, ...] = Field((), description="Models that vote on gold answers; default: sampler's.")
    rounds: int = Field(1, ge=0, description="Evolution rounds after the input round (0 = no evolution).")
    questions_per_seed: int = Field(2, gt=0)
    votes: int = Field(5, gt=0, description="m: answers sampled per new question for the majority vote.")
    majority: float = Field(0.5, gt=0.0, lt=1.0, description="A gold answer needs more than this share of votes.")
    near_duplicate_threshold: float = Field(0.85, gt=0.0, le=1.0)
    params: GenerationParams = GenerationParams(temperature=0.9, top_p=0.95, max_tokens=160)
    vote_params: GenerationParams = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=256)
    batch_size: int = Field(8, gt=0)


class CheckerSettings(Section):
    percent_policy: Literal["strict", "lenient"] = Field("strict", description="Whether '50%' equals '50'.")
    timeout_s: float = Field(5.0, gt=0)
    workers: int = Field(2, gt=0, description="Processes for symbolic (LaTeX) checks.")


class DatasetSettings(Section):
    formats: tuple[Literal["jsonl", "parquet", "hf"], ...] = ("jsonl",)
    include_gold_solutions: bool = True


class StoreSettings(Section):
    kind: Literal["local", "minio"] = "local"
    root: Path = Field(Path("runs"), description="Local store directory.")
    endpoint: str | None = Field(None, description="MinIO/S3 host:port.")
    bucket: str = "lema"
    prefix: str = ""
    secure: bool = False
    access_key_env: str = "LEMA_S3_ACCESS_KEY"
    secret_key_env: str = "LEMA_S3_SECRET_KEY"
    region: str | None = None


class BusSettings(Section):
    kind: Literal["memory", "kafka"] = "memory"
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "lema."
    group_prefix: str = "lema-"
    batch_size: int = Field(16, gt=0)
    max_attempts: int = Field(3, gt=0, description="Tries before a message goes to the dead-letter topic.")
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    max_message_bytes: int = Field(
        1_048_576,
        gt=1024,
        description="Largest message the broker takes (its message.max.bytes): larger inputs are dead-lettered, "
        "dead letters are trimmed to fit.",
    )
    # Security: secrets are read from the environment variables named here, never from the file.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="With a SASL_* security_protocol."
    )
    sasl_username_env: str = Field("LEMA_KAFKA_USERNAME", description="Env var holding the SASL user name.")
    sasl_password_env: str = Field("LEMA_KAFKA_PASSWORD", description="Env var holding the SASL password.")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the broker (SSL, SASL_SSL).")
    ssl_certfile: Path | None = Field(None, description="Client certificate, for brokers that require mutual TLS.")
    ssl_keyfile: Path | None = None


class FileSettings(BaseSettings):
    """Base of every lema settings model (pipeline, services, training): frozen, strict about unknown fields.

    Sources are merged by `load_settings` alone (file < environment < CLI), so precedence and error messages are
    the same for every model; constructing one directly uses only the values passed in.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class LemaSettings(FileSettings):
    """The pipeline: inputs, LLMs, stages, checker, dataset, store and bus."""

    run: RunSettings = RunSettings()
    input: InputSettings = InputSettings()
    llms: dict[str, LLMSettings] = Field(default_factory=lambda: {"smollm2": LLMSettings()})
    sample: SampleSettings = SampleSettings()
    correct: CorrectSettings = CorrectSettings()
    evolve: EvolveSettings = EvolveSettings()
    checker: CheckerSettings = CheckerSettings()
    dataset: DatasetSettings = DatasetSettings()
    store: StoreSettings = StoreSettings()
    bus: BusSettings = BusSettings()

    @model_validator(mode="after")
    def _stages_name_known_llms(self) -> LemaSettings:
        named = {
            "sample.models": self.sample.models,
            "correct.model": (self.correct.model,),
            "evolve.model": (self.evolve.model,),
            "evolve.answer_models": self.evolve.answer_models,
        }
        for field_name, names in named.items():
            for name in names:
                if name not in self.llms:
                    raise ValueError(f"{field_name}: unknown LLM {name!r}; defined in llms: {sorted(self.llms)}")
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["sample.params.temperature=0.5", "llms.big.backend=openai"]` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. sample.samples_per_model=4")
        _set_dotted(tree, dotted.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _env_tree(settings_cls: type[BaseModel], prefix: str) -> dict[str, Any]:
    """`PREFIX_SECTION__FIELD` variables as a nested dict, so they sit between the file and the CLI in precedence."""
    tree: dict[str, Any] = {}
    for name, raw in os.environ.items():
        if name.startswith(prefix) and "__" in name:
            dotted = name[len(prefix) :].lower().replace("__", ".")
            if dotted.split(".")[0] in settings_cls.model_fields:
                _set_dotted(tree, dotted, yaml.safe_load(raw))
    return tree


SettingsT = TypeVar("SettingsT", bound=FileSettings)


def load_settings(
    path: Path | None = None,
    overrides: list[str] | None = None,
    settings_cls: type[SettingsT] = LemaSettings,  # type: ignore[assignment]
    env_prefix: str = "LEMA_",
) -> SettingsT:
    """Load `settings_cls` from `path` (YAML), then `env_prefix` variables, then `overrides` (highest).

    Every settings model in lema (pipeline, services, training) loads through here, so precedence and error messages
    are the same everywhere: errors name the file and the dotted field.
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    data = _merge(_merge(data, _env_tree(settings_cls, env_prefix)), parse_overrides(overrides or []))
    try:
        return settings_cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc
