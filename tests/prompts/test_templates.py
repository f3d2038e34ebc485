from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lema.prompts import TEMPLATES_DIR, PromptError, load_prompt

TEMPLATE_FILES = sorted(TEMPLATES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.name)
def test_every_shipped_template_loads_and_renders(path: Path) -> None:
    kind, _, task = path.stem.partition("-")
    prompt = load_prompt(kind, task or None)  # type: ignore[arg-type]
    assert prompt.version_tag == f"{path.stem}@{prompt.version}"
    messages = prompt.render(question="Q?", solution="Step 1: x", choices="(A) 1", hint="", gold="1")
    assert messages[0].role == "system"
    assert messages[-1].role == "user"
    assert "{{" not in messages[-1].content
    roles = [m.role for m in messages[1:-1]]
    assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_sample_and_correct_exist_for_every_task() -> None:
    for task in ("gsm8k", "math", "mcq"):
        assert load_prompt("sample", task).name == f"sample-{task}"
        assert load_prompt("correct", task).name == f"correct-{task}"


def test_missing_placeholder_value_is_an_error_naming_the_template() -> None:
    with pytest.raises(PromptError, match=r"correct-gsm8k\.yaml: no value for placeholder\(s\) \['solution'\]"):
        load_prompt("correct", "gsm8k").render(question="q", hint="", gold="1")


def test_latex_survives_rendering() -> None:
    latex = r"Find $\frac{1}{2}$ of $\{1, 2\}$ and ${x}$."
    assert latex in load_prompt("sample", "math").render(question=latex, choices="")[-1].content


def test_override_directory(tmp_path: Path) -> None:
    (tmp_path / "evolve.yaml").write_text("name: evolve\nversion: 7\nsystem: s\nuser: 'Seed: {{question}}'\n")
    prompt = load_prompt("evolve", None, tmp_path)
    assert prompt.version_tag == "evolve@7"
    assert prompt.render(question="q")[-1].content == "Seed: q"


def test_a_template_is_parsed_once_until_its_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages ask for their template per record: the YAML is parsed once, and again only after the file changed."""
    template = tmp_path / "evolve.yaml"
    template.write_text("name: evolve\nversion: 1\nsystem: s\nuser: 'Seed: {{question}}'\n")
    parses = []
    real_load = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parses.append(text) or real_load(text))
    assert {load_prompt("evolve", None, tmp_path) for _ in range(50)} == {load_prompt("evolve", None, tmp_path)}
    assert len(parses) == 1
    template.write_text("name: evolve\nversion: 22\nsystem: s\nuser: 'Seed: {{question}}'\n")
    assert load_prompt("evolve", None, tmp_path).version == 22
    assert len(parses) == 2
