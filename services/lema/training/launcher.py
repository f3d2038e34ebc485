"""`lema train submit`: run a training config as a Kubernetes Job (or a Kubeflow PyTorchJob) and follow it to the end.

The config travels in a ConfigMap mounted into the pod, resolved (file + env + --set) at submit time, so the pod
trains exactly what was submitted. Pods restart with `restartPolicy: Never` and the Job's `backoffLimit`: each new
pod resumes from the latest checkpoint in the store, so a retry costs at most one checkpoint interval.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, Literal

import yaml

from lema.training.config import SubmitSettings, TrainSettings

log = logging.getLogger(__name__)

JobState = Literal["Succeeded", "Failed"]
GPU_RESOURCE = "nvidia.com/gpu"
KUBEFLOW_GROUP, KUBEFLOW_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"


class SubmitError(RuntimeError):
    """The cluster refused the job, or it could not be followed."""


def _labels(submit: SubmitSettings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "lema-train", "app.kubernetes.io/instance": submit.name}


def config_map(settings: TrainSettings) -> dict[str, Any]:
    submit = settings.submit
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{submit.name}-config", "namespace": submit.namespace, "labels": _labels(submit)},
        "data": {PurePosixPath(submit.config_path).name: yaml.safe_dump(settings.model_dump(mode="json"))},
    }


def pod_template(settings: TrainSettings, container_name: str = "train") -> dict[str, Any]:
    """The pod that runs `training_job/train.py` on the mounted config; requests equal limits (GPUs demand it)."""
    submit = settings.submit
    resources: dict[str, Any] = {"cpu": submit.cpu, "memory": submit.memory}
    if submit.gpus:
        resources[GPU_RESOURCE] = str(submit.gpus)
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in sorted(submit.env.items())]
    for name, ref in sorted(submit.secret_env.items()):
        secret, key = ref.split("/")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    config_dir = str(PurePosixPath(submit.config_path).parent)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": container_name,
                "image": submit.image,
                "imagePullPolicy": submit.image_pull_policy,
                "command": list(submit.command),
                "args": ["--config", submit.config_path],
                "env": env,
                "resources": {"requests": resources, "limits": dict(resources)},
                "volumeMounts": [
                    {"name": "config", "mountPath": config_dir, "readOnly": True},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{submit.name}-config"}},
            # NCCL and data loader workers share tensors through /dev/shm, which is 64 MiB in a container by default.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if submit.node_selector:
        spec["nodeSelector"] = dict(submit.node_selector)
    if submit.tolerations:
        spec["tolerations"] = [dict(t) for t in submit.tolerations]
    if submit.service_account:
        spec["serviceAccountName"] = submit.service_account
    return {"metadata": {"labels": _labels(submit)}, "spec": spec}


def batch_job(settings: TrainSettings) -> dict[str, Any]:
    submit = settings.submit
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": submit.name, "namespace": submit.namespace, "labels": _labels(submit)},
        "spec": {
            "backoffLimit": submit.backoff_limit,
            "ttlSecondsAfterFinished": submit.ttl_seconds_after_finished,
            "template": pod_template(settings),
        },
    }


def pytorch_job(settings: TrainSettings) -> dict[str, Any]:
    """A Kubeflow PyTorchJob: the operator sets the rendezvous environment torchrun reads on every node."""
    submit = settings.submit
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": pod_template(settings, "pytorch")}}
    if submit.nodes > 1:
        replicas["Worker"] = {
            "replicas": submit.nodes - 1,
            "restartPolicy": "Never",
            "template": pod_template(settings, "pytorch"),
        }
    return {
        "apiVersion": f"{KUBEFLOW_GROUP}/{KUBEFLOW_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": submit.name, "namespace": submit.namespace, "labels": _labels(submit)},
        "spec": {
            "nprocPerNode": str(max(submit.gpus, 1)),
            "runPolicy": {
                "backoffLimit": submit.backoff_limit,
                "ttlSecondsAfterFinished": submit.ttl_seconds_after_finished,
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


def kubernetes_client() -> Any:
    """An API client from the in-cluster service account, else from the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it now so a changed environment counts.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    return client.ApiClient()


def _job_state(status: dict[str, Any] | None) -> JobState | None:
    """Terminal state from a Job's or PyTorchJob's status conditions (both use Failed; Complete / Succeeded)."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Succeeded"):
            return "Succeeded"
        if condition.get("status") == "True" and condition.get("type") == "Failed":
            return "Failed"
    return None


def submit_job(
    settings: TrainSettings,
    api_client: Any,
    follow: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> JobState | None:
    """Create the ConfigMap and the job, then (if `follow`) poll it until it succeeds or fails."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    submit = settings.submit
    # Typed as Any: the client takes plain manifests (dicts) wherever its signatures name model classes.
    core: Any = client.CoreV1Api(api_client)
    batch: Any = client.BatchV1Api(api_client)
    custom: Any = client.CustomObjectsApi(api_client)
    try:
        core.create_namespaced_config_map(submit.namespace, config_map(settings))
        if submit.kind == "job":
            batch.create_namespaced_job(submit.namespace, batch_job(settings))
        else:
            custom.create_namespaced_custom_object(
                KUBEFLOW_GROUP, KUBEFLOW_VERSION, submit.namespace, PYTORCHJOB_PLURAL, pytorch_job(settings)
            )
    except ApiException as exc:
        where = f"{submit.kind} {submit.namespace}/{submit.name}"
        raise SubmitError(f"{where}: {exc.status} {exc.reason}: {exc.body}") from None
    log.info("created %s %s/%s", submit.kind, submit.namespace, submit.name)
    if not follow:
        return None
    while True:
        if submit.kind == "job":
            status = api_client.sanitize_for_serialization(
                batch.read_namespaced_job_status(submit.name, submit.namespace).status
            )
        else:
            status = custom.get_namespaced_custom_object_status(
                KUBEFLOW_GROUP, KUBEFLOW_VERSION, submit.namespace, PYTORCHJOB_PLURAL, submit.name
            ).get("status")
        state = _job_state(status)
        if state is not None:
            log.info("%s %s/%s %s", submit.kind, submit.namespace, submit.name, state)
            return state
        sleep(submit.poll_seconds)
