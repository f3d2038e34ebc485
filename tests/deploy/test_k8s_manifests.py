"""The plain manifests in k8s/: schema-valid, complete, and in step with the chart and with `lema train submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testing import K8S_DIR, REPO, Manifest, all_problems, config_file, of_kind, parse, render, workloads

from lema.training.config import load_train_settings

MANIFEST_FILES = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
# Every call `lema train submit` makes (services/lema/training/launcher.py): (API group, resource, verb).
LAUNCHER_CALLS = [
    ("", "configmaps", "create"),
    *[("batch", "jobs", verb) for verb in ("create", "get", "list", "watch", "delete")],
    ("batch", "jobs/status", "get"),
    *[("kubeflow.org", "pytorchjobs", verb) for verb in ("create", "get", "list", "watch", "delete")],
    ("kubeflow.org", "pytorchjobs/status", "get"),
    *[("", "pods", verb) for verb in ("get", "list", "watch")],
    ("", "pods/log", "get"),
]


def load(name: str) -> list[Manifest]:
    return parse(f"k8s/{name}", (K8S_DIR / name).read_text())


def everything() -> list[Manifest]:
    return [m for path in MANIFEST_FILES for m in load(path.name)]


def training_workloads() -> list[Manifest]:
    return [m for m in everything() if m.kind in ("Job", "PyTorchJob")]


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_every_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    manifests = load(path.name)
    assert manifests
    problems = all_problems(manifests)
    assert not problems, "\n".join(problems)


def test_kustomization_applies_every_manifest_but_the_multi_node_alternative() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    expected = {p.name for p in MANIFEST_FILES} - {"train-pytorchjob.yaml"}
    assert set(kustomization["resources"]) == expected
    assert len(kustomization["resources"]) == len(expected)


def test_everything_lives_in_the_lema_namespace() -> None:
    (namespace,) = of_kind(everything(), "Namespace")
    for manifest in everything():
        if manifest.kind != "Namespace":
            assert manifest.body["metadata"]["namespace"] == namespace.name, manifest.where


def test_launcher_may_do_what_lema_train_submit_does_and_no_more_than_the_chart_grants() -> None:
    (role,) = of_kind(load("launcher-rbac.yaml"), "Role")
    for call in LAUNCHER_CALLS:
        assert allows(role.body["rules"], *call), f"{role.where}: launcher cannot {call}"
    (chart_role,) = [m for m in of_kind(render({}), "Role") if m.name.endswith("-launcher")]
    assert role.body["rules"] == chart_role.body["rules"]
    (binding,) = of_kind(load("launcher-rbac.yaml"), "RoleBinding")
    (account,) = of_kind(load("launcher-rbac.yaml"), "ServiceAccount")
    assert binding.body["roleRef"]["name"] == role.name
    assert binding.body["subjects"] == [{"kind": "ServiceAccount", "name": account.name, "namespace": "lema"}]


def test_training_pods_request_the_gpus_they_limit_and_run_hardened() -> None:
    for manifest, template in workloads(training_workloads()):
        pod = template["spec"]
        (container,) = pod["containers"]
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"], manifest.where
        assert f"--nproc-per-node={resources['limits']['nvidia.com/gpu']}" in container["command"], manifest.where
        assert pod["runtimeClassName"] and pod["nodeSelector"] and pod["tolerations"], manifest.where
        assert pod["securityContext"]["runAsNonRoot"] is True, manifest.where
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], manifest.where
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, manifest.where
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", manifest.where
        assert volumes[mounts["/etc/lema/train.yaml"]]["configMap"]["name"] == "lema-train-config", manifest.where


def test_the_training_config_loads_with_lemas_train_settings(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config_file(load("train-config.yaml"), "lema-train-config", "train.yaml")))
    settings = load_train_settings(path)
    assert settings.store.kind == "minio"
    # The trainer image's working directory holds training_job/, so relative DeepSpeed paths resolve there.
    assert settings.deepspeed.config is not None and (REPO / settings.deepspeed.config).is_file()


def test_the_plain_job_runs_the_same_container_as_the_charts() -> None:
    (job,) = of_kind(load("train-job.yaml"), "Job")
    (container,) = job.body["spec"]["template"]["spec"]["containers"]
    values = {"training": {"enabled": True, "config": {"metrics": {"port": 9108}}}}
    (chart_job,) = of_kind(render(values), "Job")
    (chart_container,) = chart_job.body["spec"]["template"]["spec"]["containers"]
    for field in ("name", "command", "env", "ports", "securityContext", "volumeMounts"):
        assert container[field] == chart_container[field], f"k8s/train-job.yaml and the chart differ in {field}"
