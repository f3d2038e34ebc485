"""A chart bug must fail with a message that names the template (or value) and the field, never pass silently.

Each test breaks a scratch copy of the chart, or feeds it bad values, the way a careless edit would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest
from deploy_testing import all_problems, copy_chart, render


def break_template(tmp_path: Path, template: str, old: str, new: str) -> Path:
    chart = copy_chart(tmp_path)
    path = chart / "templates" / template
    source = path.read_text()
    assert old in source, f"{template} no longer contains {old!r}: update this test"
    path.write_text(source.replace(old, new, 1))
    return chart


def test_a_misspelt_field_names_the_template_and_the_field(tmp_path: Path) -> None:
    chart = break_template(tmp_path, "deployment.yaml", "containerPort:", "containerPrt:")
    problems = all_problems(render({}, chart))
    assert all(p.startswith("lema/templates/deployment.yaml: Deployment lema-") for p in problems), problems
    field = "lema/templates/deployment.yaml: Deployment lema-sampler: spec.template.spec.containers[0].ports[0]: "
    assert field + "Additional properties are not allowed ('containerPrt' was unexpected)" in problems
    assert field + "'containerPort' is a required property" in problems


def test_a_wrong_type_in_a_template_names_the_field(tmp_path: Path) -> None:
    budget = "{{ $.Values.podDisruptionBudget.maxUnavailable }}"
    chart = break_template(tmp_path, "poddisruptionbudget.yaml", budget, f"[{budget}]")
    problems = all_problems(render({}, chart))
    assert problems and all("lema/templates/poddisruptionbudget.yaml: PodDisruptionBudget" in p for p in problems)
    assert all(": spec.maxUnavailable: " in p for p in problems), problems


def test_a_number_where_keda_wants_a_string_names_the_trigger_field(tmp_path: Path) -> None:
    chart = break_template(tmp_path, "autoscaling.yaml", "{{ $spec.lagThreshold | quote }}", "{{ $spec.lagThreshold }}")
    problems = all_problems(render({"keda": {"enabled": True}}, chart))
    assert problems
    assert all(p.startswith("lema/templates/autoscaling.yaml: ScaledObject lema-") for p in problems), problems
    assert "spec.triggers[0].metadata.lagThreshold: 100 is not of type 'string'" in "\n".join(problems)


def test_a_crd_missing_a_required_field_names_it(tmp_path: Path) -> None:
    chart = break_template(tmp_path, "autoscaling.yaml", "scaleTargetRef:", "scaleTarget:")
    problems = all_problems(render({"keda": {"enabled": True}}, chart))
    where = "lema/templates/autoscaling.yaml: ScaledObject lema-sampler: spec: "
    assert where + "'scaleTargetRef' is a required property" in problems
    assert where + "Additional properties are not allowed ('scaleTarget' was unexpected)" in problems


def test_a_pytorchjob_without_the_pytorch_container_is_caught(tmp_path: Path) -> None:
    chart = break_template(tmp_path, "_training.tpl", "- name: pytorch", "- name: trainer")
    problems = "\n".join(all_problems(render({"training": {"enabled": True, "nodes": 2}}, chart)))
    assert "lema/templates/training.yaml: PyTorchJob lema-train: spec.pytorchReplicaSpecs.Master.template" in problems


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"services": {"sampler": {"replicas": "two"}}}, "at '/services/sampler/replicas': got string, want integer"),
        (
            {"services": {"sampler": {"replica": 2}}},
            "at '/services/sampler': additional properties 'replica' not allowed",
        ),
        ({"services": {"samplr": {"enabled": True}}}, "at '/services': additional properties 'samplr' not allowed"),
        ({"training": {"gpusPerNode": 0}}, "at '/training/gpusPerNode': minimum: got 0, want 1"),
        ({"vllm": {"image": {"pullPolicy": "Sometimes"}}}, "at '/vllm/image/pullPolicy'"),
        (
            {"secrets": {"llmApiKeys": [{"env": "OPENAI_API_KEY", "secretName": "s", "key": "k", "value": "sk-123"}]}},
            "at '/secrets/llmApiKeys/0': additional properties 'value' not allowed",
        ),
        (
            {"kafka": {"persistance": {"enabled": True}}},
            "kafka:\n- at '': additional properties 'persistance' not allowed",
        ),
    ],
    ids=["wrong-type", "misspelt-key", "unknown-service", "out-of-range", "bad-enum", "literal-secret", "subchart"],
)
def test_bad_values_are_refused_naming_the_value(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render(values)
    assert expected in str(refused.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"kafka": {"enabled": False}}, "externalKafka.bootstrapServers is required when kafka.enabled=false"),
        ({"minio": {"enabled": False}}, "externalMinio.endpoint is required when minio.enabled=false"),
    ],
    ids=["kafka", "minio"],
)
def test_a_missing_required_value_names_the_template_and_the_value(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as failed:
        render(values)
    assert "execution error at (lema/templates/" in str(failed.value)
    assert expected in str(failed.value)
