"""Render the Helm chart with Helm's own Go engine and check manifests against the Kubernetes schemas.

Every problem is reported as `<template or file>: <Kind> <name>: <field path>: <what is wrong>`, so a failing test
points at the line to fix. Built-in kinds are checked by kubernetes-validate in strict mode (unknown fields are
errors) for one pinned Kubernetes version; the CRD kinds the chart renders are checked against the JSON schemas in
`crd_schemas/`, which reuse the Kubernetes definitions for the pod templates and selectors they embed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "lema"
K8S_DIR = REPO / "k8s"
PROMPT_TEMPLATES = REPO / "services" / "lema" / "prompts" / "templates"
KUBERNETES_VERSION = "1.30.0"
# kubernetes-validate's strict schemas (additionalProperties: false) for that version.
KUBERNETES_SCHEMAS = files("kubernetes_validate").joinpath(f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict")
RELEASE = "lema"
NAMESPACE = "lema"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-kubeflow-v1.json",
}

# The values matrix the chart is tested over: each case turns on one deployment shape.
VALUES_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu-sampling": {
        "vllm": {"enabled": True, "runtimeClassName": "nvidia", "hfToken": {"secretName": "lema-hf", "key": "token"}},
        "config": {"sample": {"models": ["vllm"]}, "correct": {"model": "vllm"}},
    },
    "keda": {"keda": {"enabled": True, "authenticationRef": "lema-kafka-auth"}},
    "service-monitor": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "dashboard": {"enabled": True},
        },
        "vllm": {"enabled": True},
    },
    "external-kafka-minio": {
        "kafka": {"enabled": False},
        "externalKafka": {"bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
        "minio": {"enabled": False},
        "externalMinio": {"endpoint": "minio.storage:443", "secure": True},
    },
    "training-job": {
        "training": {
            "enabled": True,
            "gpusPerNode": 2,
            "runtimeClassName": "nvidia",
            "config": {"optim": {"epochs": 1}},
        },
    },
    "training-pytorchjob": {"training": {"enabled": True, "nodes": 3, "gpusPerNode": 8}},
    "secrets-and-prompts": {
        "secrets": {
            "llmApiKeys": [{"env": "OPENAI_API_KEY", "secretName": "lema-llm", "key": "openai-api-key"}],
            "grpcToken": {"secretName": "lema-grpc", "key": "token"},
        },
        # A whole template set, as run.prompts_dir replaces the packaged one.
        "prompts": {"templates": {path.name: path.read_text() for path in sorted(PROMPT_TEMPLATES.glob("*.yaml"))}},
    },
    "gpu-cluster-example": yaml.safe_load((REPO / "helm" / "examples" / "gpu-cluster.yaml").read_text()),
    # Locked down: TLS, client-side balancing, NetworkPolicy peers, every image pinned by digest, vLLM behind it.
    "tls-policies-digests": {
        "tls": {"enabled": True, "secretName": "lema-tls", "serverName": "lema.lema.svc"},
        "service": {"headless": True},
        "networkPolicy": {
            "grpcFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "clients"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
        "image": {"digest": "sha256:" + "1" * 64},
        "vllm": {"enabled": True, "image": {"digest": "sha256:" + "2" * 64}},
        "kafka": {"image": {"digest": "sha256:" + "3" * 64}},
        "minio": {"image": {"digest": "sha256:" + "4" * 64}},
        "topics": {"partitions": 12},
    },
    # Everything off that is on by default: no auth, no NetworkPolicy, no helm test, bundled infra on emptyDir.
    "open-ephemeral": {
        "secrets": {"grpcToken": {"secretName": "", "key": "token"}},
        "networkPolicy": {"enabled": False},
        "tests": {"enabled": False},
        "kafka": {"persistence": {"enabled": False}},
        "minio": {"persistence": {"enabled": False}},
    },
}


@dataclass(frozen=True)
class Manifest:
    source: str
    """The template (or file) that produced it, e.g. `lema/templates/deployment.yaml`."""
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name"))

    @property
    def where(self) -> str:
        return f"{self.source}: {self.kind} {self.name}"


def parse(source: str, text: str) -> list[Manifest]:
    return [Manifest(source, body) for body in yaml.safe_load_all(text) if body]


def render(values: dict[str, Any], chart_dir: Path = CHART_DIR) -> list[Manifest]:
    """The manifests `helm install` would apply (values checked against values.schema.json first)."""
    with helm_python.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [m for source, text in sorted(rendered.items()) if source.endswith(".yaml") for m in parse(source, text)]


def render_notes(values: dict[str, Any]) -> str:
    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return rendered[f"{CHART_DIR.name}/templates/NOTES.txt"]


def copy_chart(destination: Path) -> Path:
    """A scratch copy of the chart, for tests that break it on purpose."""
    return Path(shutil.copytree(CHART_DIR, destination / CHART_DIR.name))


def _field_path(path: Iterator[Any] | Any) -> str:
    out = ""
    for item in path:
        out += f"[{item}]" if isinstance(item, int) else f".{item}"
    return out.lstrip(".") or "<root>"


@cache
def _kubernetes_definitions() -> Resource[Any]:
    return Resource.from_contents(json.loads(KUBERNETES_SCHEMAS.joinpath("_definitions.json").read_text()))


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """The schema of one kind: kubernetes-validate's strict one for built-in kinds, ours for CRDs; None if unknown."""
    crd_schema = CRD_SCHEMAS.get((api_version, kind))
    schema_file: Traversable
    if crd_schema is not None:
        schema_file = Path(__file__).parent / "crd_schemas" / crd_schema
    else:
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1: rbac-v1
        schema_file = KUBERNETES_SCHEMAS.joinpath(f"{kind.lower()}-{group_version}.json")
    if not schema_file.is_file():
        return None
    schema = json.loads(schema_file.read_text())
    return jsonschema.Draft202012Validator(schema, registry=_kubernetes_definitions() @ Registry())


def problems(manifest: Manifest) -> list[str]:
    """Everything wrong with one manifest against its schema; empty when it is valid."""
    validator = _validator(str(manifest.body.get("apiVersion")), manifest.kind)
    if validator is None:
        return [f"{manifest.where}: no schema for {manifest.body.get('apiVersion')} {manifest.kind}"]
    errors = sorted(validator.iter_errors(manifest.body), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{manifest.where}: {_field_path(e.absolute_path)}: {e.message}" for e in errors]


def all_problems(manifests: list[Manifest]) -> list[str]:
    return [problem for manifest in manifests for problem in problems(manifest)]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind]


def pod_templates(manifest: Manifest) -> list[dict[str, Any]]:
    """The pod templates inside a workload (one per PyTorchJob replica type)."""
    spec = manifest.body.get("spec", {})
    if manifest.kind in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]]
    if manifest.kind == "Pod":  # the `helm test` hook
        return [manifest.body]
    if manifest.kind == "PyTorchJob":
        return [replica["template"] for replica in spec["pytorchReplicaSpecs"].values()]
    return []


def workloads(manifests: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [(m, template) for m in manifests for template in pod_templates(m)]


def config_file(manifests: list[Manifest], configmap: str, key: str) -> dict[str, Any]:
    """A YAML file the chart ships in a ConfigMap (the lema or training settings)."""
    (found,) = [m for m in of_kind(manifests, "ConfigMap") if m.name == configmap]
    loaded: dict[str, Any] = yaml.safe_load(found.body["data"][key])
    return loaded
