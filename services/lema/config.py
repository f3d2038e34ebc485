"""Typed settings: one frozen model, read from a YAML file, then `LEMA_*` environment variables, then CLI overrides.

Precedence (highest first): `--set a.b=value` overrides > environment (`LEMA_SAMPLE__TEMPERATURE=0.5`) > YAML file >
defaults. Every stage names its own LLM from the `llms` table, because LEMA samples with several models and corrects
with a stronger one.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

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
    max_batch_requests: int = Field(
        64, gt=0, description="Concurrent calls (gRPC, Kafka, HTTP) merged into one batch (transformers, vllm)."
    )
    batch_wait_ms: float = Field(
        50.0,
        ge=0,
        description="How long a batch waits for more calls to join it: callers answered by one batch send their next "
        "calls over tens of ms on a loaded machine, and a straggler left out waits a whole generation.",
    )
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
    percent_policy: Literal["by_task", "strict", "lenient"] = Field(
        "by_task",
        description="Whether '50%' equals '50': by_task follows each dataset's graders (MATH: yes; GSM8K: no).",
    )
    timeout_s: float = Field(5.0, gt=0)
    workers: int = Field(2, gt=0, description="Processes for symbolic (LaTeX) checks.")


class DatasetSettings(Section):
    formats: tuple[Literal["jsonl", "parquet", "hf"], ...] = ("jsonl",)
    include_gold_solutions: bool = True
    sink: Literal["delta"] = Field("delta", description="Table format of the dataset: an append-only Delta table.")
    writer_batch_size: int = Field(
        2000, gt=0, description="Records the Kafka dataset writer appends per commit (its max poll size)."
    )
    checkpoint_interval: int = Field(
        10, gt=0, description="Commits between table checkpoints: bounds the log each commit and each (re)start reads."
    )
    commit_retry_s: float = Field(
        300.0, gt=0, description="How long a commit refused by an unreachable store is retried before failing."
    )
    compact_every_commits: int = Field(
        200,
        ge=0,
        description="Commits of a writer between its compactions of the table's small files (0: never): bounds the "
        "live files every commit and restart replays. Replaced files stay until `lema dataset vacuum`.",
    )


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
    client: Literal["librdkafka", "kafka-python"] = Field(
        "librdkafka",
        description="The Kafka client the workers consume and produce with: librdkafka (confluent-kafka) costs a "
        "tenth of kafka-python's CPU per message; both keep the same delivery guarantees.",
    )
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


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {key!r} is not a section")
    node[keys[-1]] = value


def _yaml_value(raw: str, origin: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{origin}: the value is not valid YAML ({problem})") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["sample.params.temperature=0.5", "llms.big.backend=openai"]` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. sample.samples_per_model=4")
        origin = f"--set {dotted.strip()}"
        _set_dotted(tree, dotted.strip(), _yaml_value(raw, origin), origin)
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
                _set_dotted(tree, dotted, _yaml_value(raw, name), name)
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
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_syntax_error(path, exc)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    env = _env_tree(settings_cls, env_prefix)
    cli = parse_overrides(overrides or [])
    try:
        return settings_cls.model_validate(_merge(_merge(data, env), cli))
    except ValidationError as exc:
        sources = _Sources(path, text, env_prefix, env, cli)
        problems = "; ".join(_problem(settings_cls, sources, err) for err in exc.errors())
        raise ConfigError(problems) from None


def _yaml_syntax_error(path: Path, exc: yaml.YAMLError) -> str:
    """`file:line:column: invalid YAML: problem (context)`, in plain words, without PyYAML's multi-line excerpt."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


@dataclass(frozen=True)
class _Sources:
    """Where the merged settings came from, to blame the right one: `--set`, an environment variable, or the file."""

    path: Path | None
    text: str
    env_prefix: str
    env: dict[str, Any]
    cli: dict[str, Any]

    def origin(self, loc: tuple[str, ...]) -> str:
        """`--set a.b`, `LEMA_A__B` (either names the field), or `file:line: a.b`."""
        if _holds(self.cli, loc):
            return f"--set {'.'.join(loc)}"
        if _holds(self.env, loc):
            return self.env_prefix + "__".join(loc).upper()
        if self.path is None:
            return f"defaults: {'.'.join(loc)}"
        line = _line_of(self.text, loc)
        return f"{self.path}:{line}: {'.'.join(loc)}" if line else f"{self.path}: {'.'.join(loc)}"


def _holds(tree: dict[str, Any], loc: tuple[str, ...]) -> bool:
    """Whether `tree` sets `loc` or a section above it (an override of a whole section owns its fields)."""
    node: Any = tree
    for key in loc:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return bool(loc)


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """The 1-based line of the deepest key of `loc` found in the YAML `text`."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _problem(settings_cls: type[BaseModel], sources: _Sources, err: Any) -> str:
    loc = tuple(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
        known = _field_names(settings_cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        if close:
            message += f"; did you mean {'.'.join((*loc[:-1], close[0]))!r}?"
        elif known:
            message += f"; known here: {', '.join(sorted(known))}"
    if not loc:  # a check across sections: its message names the fields
        return f"{sources.path or 'settings'}: {message}"
    return f"{sources.origin(loc)}: {message}"


def _field_names(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Field names of the settings section at `loc` (through `dict[str, Section]` tables such as `llms`)."""
    annotation: Any = model
    for key in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(key)
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []
