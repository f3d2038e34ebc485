from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lema.config import ConfigError, LemaSettings, load_settings, parse_overrides
from lema.training.config import TrainSettings, load_train_settings

REPO = Path(__file__).resolve().parents[1]
PIPELINE_CONFIGS = sorted((REPO / "examples").glob("*.yaml"))
TRAINING_CONFIGS = sorted((REPO / "training_job").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_pipeline_config_loads(path: Path) -> None:
    settings = load_settings(path)
    assert isinstance(settings, LemaSettings)
    assert Path(REPO / settings.input.path).is_file() or settings.input.path.startswith("hf://")


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_training_config_loads(path: Path) -> None:
    assert isinstance(load_train_settings(path), TrainSettings)


def test_shipped_configs_exist() -> None:
    assert PIPELINE_CONFIGS and TRAINING_CONFIGS


def test_precedence_is_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"sample": {"samples_per_model": 3, "batch_size": 5}}))
    monkeypatch.setenv("LEMA_SAMPLE__SAMPLES_PER_MODEL", "4")
    monkeypatch.setenv("LEMA_SAMPLE__PARAMS__TEMPERATURE", "0.2")
    settings = load_settings(config, ["sample.samples_per_model=6"])
    assert settings.sample.samples_per_model == 6
    assert settings.sample.params.temperature == 0.2
    assert settings.sample.batch_size == 5


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.run.name = "other"  # type: ignore[misc]


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("run:\n  name: x\nsample:\n  samples_per_model: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: sample\.samples_per_model: Input should be greater than 0$"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_yaml_syntax_error_names_file_line_and_column_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sample:\n  params: [unclosed\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert message.startswith(f"{config}:3:1: invalid YAML: expected ',' or ']'")
    assert "\n" not in message and "<unicode string>" not in message


def test_typo_gets_did_you_mean_and_the_line(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("sampel: {}\nllms:\n  big:\n    backnd: openai\n")
    with pytest.raises(ConfigError) as typo:
        load_settings(config)
    message = str(typo.value)
    assert f"{config}:1: sampel: unknown field; did you mean 'sample'?" in message
    assert f"{config}:4: llms.big.backnd: unknown field; did you mean 'llms.big.backend'?" in message
    with pytest.raises(ConfigError) as far:
        load_settings(None, ["sample.zzz=1"])
    assert str(far.value).startswith("--set sample.zzz: unknown field; known here: batch_size, models, params")


def test_bad_override_is_blamed_on_set_or_env_not_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "good.yaml"
    config.write_text("sample:\n  samples_per_model: 2\n")
    with pytest.raises(ConfigError, match=r"^--set sample\.samples_per_model: Input should be greater than 0$"):
        load_settings(config, ["sample.samples_per_model=0"])
    with pytest.raises(ConfigError, match=r"^--set sample\.params: the value is not valid YAML"):
        load_settings(config, ["sample.params=[1"])
    monkeypatch.setenv("LEMA_SAMPLE__BATCH_SIZE", "-3")
    with pytest.raises(ConfigError, match=r"^LEMA_SAMPLE__BATCH_SIZE: Input should be greater than 0$"):
        load_settings(config)


def test_stage_must_name_a_defined_llm() -> None:
    with pytest.raises(ConfigError, match=r"correct\.model: unknown LLM 'big'"):
        load_settings(None, ["correct.model=big"])


def test_overrides_parse_yaml_values() -> None:
    assert parse_overrides(["a.b=1", "a.c=[x, y]", "d=true"]) == {"a": {"b": 1, "c": ["x", "y"]}, "d": True}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])
