"""`lema train submit`: run a training config as a Kubernetes Job (or a Kubeflow PyTorchJob) and follow it to the end.

The config travels in a ConfigMap mounted into the pod, resolved (file + env + --set) at submit time, so the pod
trains exactly what was submitted; the ConfigMap is owned by the job, so it goes when the job goes. Pods restart with
`restartPolicy: Never` and the Job's `backoffLimit`: each new pod resumes from the latest checkpoint in the object
store, so a retry costs at most one checkpoint interval. The pod runs as the trainer image's unprivileged user on a
read-only root filesystem; everything it writes goes to emptyDir volumes.
"""

from __future__ import annotations

import json
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
IMAGE_WORKDIR = PurePosixPath("/opt/lema")
"""The trainer image's working directory (docker/trainer.Dockerfile): relative paths in the config start here."""
IMAGE_USER = 10001
IMAGE_HOME = PurePosixPath("/home/lema")
CANNOT_START = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff"}
)
"""Container waiting reasons that no amount of waiting fixes: following the job any longer would wait forever."""


class SubmitError(RuntimeError):
    """The cluster refused the job, or it could not be followed."""


def _labels(submit: SubmitSettings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "lema-train", "app.kubernetes.io/instance": submit.name}


def check_submittable(settings: TrainSettings) -> None:
    """Refuse a config that cannot train in a pod, before anything is created."""
    if settings.store.kind == "local":
        raise SubmitError(
            "store.kind is 'local': a pod would find no dataset and a retried pod would start over; "
            "submit a config whose store is the object store (see training_job/cluster.yaml)"
        )


def config_map(settings: TrainSettings) -> dict[str, Any]:
    submit = settings.submit
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{submit.name}-config", "namespace": submit.namespace, "labels": _labels(submit)},
        "data": {PurePosixPath(submit.config_path).name: yaml.safe_dump(settings.model_dump(mode="json"))},
    }


def _in_image(path: Any) -> str:
    return str(IMAGE_WORKDIR / PurePosixPath(str(path)))


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
    container: dict[str, Any] = {
        "name": container_name,
        "image": submit.image,
        "imagePullPolicy": submit.image_pull_policy,
        "command": list(submit.command),
        "args": ["--config", submit.config_path],
        "env": env,
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": config_dir, "readOnly": True},
            # The root filesystem is read-only: local checkpoints, model conversion caches and scratch go here.
            {"name": "work", "mountPath": _in_image(settings.run.work_dir)},
            {"name": "cache", "mountPath": str(IMAGE_HOME / ".cache")},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    if settings.metrics.port is not None:
        container["ports"] = [{"name": "metrics", "containerPort": settings.metrics.port, "protocol": "TCP"}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER,
            "runAsGroup": IMAGE_USER,
            "fsGroup": IMAGE_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{submit.name}-config"}},
            {"name": "work", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
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
            "activeDeadlineSeconds": submit.active_deadline_seconds,
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
                "activeDeadlineSeconds": submit.active_deadline_seconds,
                "ttlSecondsAfterFinished": submit.ttl_seconds_after_finished,
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


def manifests(settings: TrainSettings) -> list[dict[str, Any]]:
    """What `submit` creates, in order: the ConfigMap, then the job (which then becomes the ConfigMap's owner)."""
    check_submittable(settings)
    job = batch_job(settings) if settings.submit.kind == "job" else pytorch_job(settings)
    return [config_map(settings), job]


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (the mounted config) as literal blocks, so the printed ConfigMap reads like the file."""


_ManifestDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def render_manifests(settings: TrainSettings) -> str:
    """`submit --dry-run`: the manifests as a YAML stream, ready for `kubectl apply -f -`."""
    return yaml.dump_all(manifests(settings), Dumper=_ManifestDumper, sort_keys=False)


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


def _api_error(exc: Any) -> str:
    """Status, reason and the API server's own message (its body is a JSON Status object)."""
    try:
        message = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        message = ""
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


def _owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    metadata = job["metadata"]
    return {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": metadata["name"], "uid": metadata["uid"]}


def unstartable_pod(pods: list[dict[str, Any]], now: float, unschedulable_seconds: float) -> str | None:
    """Why one of the job's pods cannot start (image cannot be pulled, container config broken, no node fits for
    too long), or None while every pod may still start."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in CANNOT_START:
                return f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                since = _timestamp(condition.get("lastTransitionTime"))
                if since is not None and now - since >= unschedulable_seconds:
                    return f"pod {name}: Unschedulable for {now - since:.0f}s: {condition.get('message', '')}"
    return None


def _timestamp(value: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def submit_job(
    settings: TrainSettings,
    api_client: Any,
    follow: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> JobState | None:
    """Create the ConfigMap and the job, hand the ConfigMap to the job, then (if `follow`) poll the job until it
    succeeds or fails, or until one of its pods cannot start."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    submit = settings.submit
    config, job = manifests(settings)
    where = f"{submit.kind} {submit.namespace}/{submit.name}"
    # Typed as Any: the client takes plain manifests (dicts) wherever its signatures name model classes.
    core: Any = client.CoreV1Api(api_client)
    batch: Any = client.BatchV1Api(api_client)
    custom: Any = client.CustomObjectsApi(api_client)
    config_name = config["metadata"]["name"]
    try:
        core.create_namespaced_config_map(submit.namespace, config)
    except ApiException as exc:
        raise SubmitError(f"configmap {submit.namespace}/{config_name}: {_api_error(exc)}") from None
    try:
        if submit.kind == "job":
            created = api_client.sanitize_for_serialization(batch.create_namespaced_job(submit.namespace, job))
        else:
            custom.create_namespaced_custom_object(
                KUBEFLOW_GROUP, KUBEFLOW_VERSION, submit.namespace, PYTORCHJOB_PLURAL, job
            )
            # Read back: the client decodes a custom object only from some status codes, and the uid is what counts.
            created = custom.get_namespaced_custom_object(
                KUBEFLOW_GROUP, KUBEFLOW_VERSION, submit.namespace, PYTORCHJOB_PLURAL, submit.name
            )
        # Owned by the job: deleting the job (or its TTL expiring) deletes the config, so the name can be reused.
        owner = {"metadata": {"ownerReferences": [_owner_reference(created)]}}
        core.patch_namespaced_config_map(config_name, submit.namespace, owner)
    except ApiException as exc:
        core.delete_namespaced_config_map(config_name, submit.namespace)
        raise SubmitError(f"{where}: {_api_error(exc)}") from None
    log.info("created %s", where)
    if not follow:
        return None
    selector = f"app.kubernetes.io/instance={submit.name}"
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
            log.info("%s %s", where, state)
            return state
        pods = api_client.sanitize_for_serialization(
            core.list_namespaced_pod(submit.namespace, label_selector=selector).items
        )
        problem = unstartable_pod(pods, clock(), submit.unschedulable_seconds)
        if problem is not None:
            raise SubmitError(
                f"{where}: {problem}; stopped following (the job is left in place: "
                f"kubectl -n {submit.namespace} delete {submit.kind} {submit.name})"
            )
        sleep(submit.poll_seconds)
