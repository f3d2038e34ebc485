"""`lema train submit` against kmock's Kubernetes emulator: a real HTTP API that the official client talks to."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from lema.cli import app
from lema.training.config import TrainSettings, load_train_settings
from lema.training.launcher import SubmitError, submit_job

REPO = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = REPO / "training_job" / "cluster.yaml"


class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus what an API server does on create that the launcher relies on: a `metadata.uid`
    (owner references name it). Keeps every created body as the client sent it."""

    received: list[dict[str, Any]]

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.action == kmock.action.CREATE:
            self.received.append(copy.deepcopy(request.data))
            request.data.setdefault("metadata", {})["uid"] = str(uuid.uuid4())
        return await super()._handle(request)


@pytest.fixture()
def emulator() -> ApiServerEmulator:
    server = ApiServerEmulator()
    server.received = []
    server.resources["v1/pods"] = {}  # listed by the follower before any pod exists
    server.resources["kubeflow.org/v1/pytorchjobs"] = {}  # a CRD the training operator installs
    return server


@pytest.fixture()
def cluster(emulator: ApiServerEmulator) -> Iterator[client.ApiClient]:
    """The emulator served on a local port from its own event loop, and an API client pointed at it."""
    ready, stop_box, url_box = threading.Event(), [], []

    async def serve() -> None:
        async with emulator, kmock.Server(emulator) as server:
            stop = asyncio.Event()
            url_box.append(str(server.url).rstrip("/"))
            stop_box.append((asyncio.get_running_loop(), stop))
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30)
    configuration = client.Configuration()
    configuration.host = url_box[0]
    api = client.ApiClient(configuration)
    yield api
    api.close()
    loop, stop = stop_box[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def _settings(**submit: Any) -> TrainSettings:
    config = load_train_settings(CLUSTER_CONFIG).model_dump(mode="json")
    config["submit"].update(submit)
    return TrainSettings.model_validate(config)


def _finish_when_polled(api: client.ApiClient, name: str, namespace: str, condition: str) -> Any:
    """A `sleep` for the follower that, on its first call, sets the job's terminal condition as a controller would."""

    def sleep(_: float) -> None:
        status = {"conditions": [{"type": condition, "status": "True"}]}
        client.BatchV1Api(api).patch_namespaced_job_status(name, namespace, {"status": status})

    return sleep


@pytest.mark.parametrize("condition, state", [("Complete", "Succeeded"), ("Failed", "Failed")])
def test_submit_creates_a_gpu_job_and_reports_its_terminal_state(
    cluster: client.ApiClient, condition: str, state: str
) -> None:
    settings = _settings(name="lema-train-1", namespace="ml", image="registry.example/lema:1.2", gpus=2)
    sleep = _finish_when_polled(cluster, "lema-train-1", "ml", condition)

    assert submit_job(settings, cluster, sleep=sleep) == state

    job = client.BatchV1Api(cluster).read_namespaced_job("lema-train-1", "ml")
    assert job.spec.backoff_limit == 3
    assert job.spec.ttl_seconds_after_finished == 86400
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    (container,) = pod.containers
    assert container.image == "registry.example/lema:1.2"
    assert container.command == ["torchrun", "--nproc-per-node=gpu", "training_job/train.py"]
    assert container.args == ["--config", "/etc/lema/train.yaml"]
    assert container.resources.requests == container.resources.limits
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    secret_refs = {e.name: e.value_from.secret_key_ref for e in container.env if e.value_from}
    assert secret_refs["LEMA_S3_SECRET_KEY"].name == "lema-s3"
    assert secret_refs["LEMA_S3_SECRET_KEY"].key == "secret-key"
    # The pod trains exactly the submitted config: it is mounted from a ConfigMap.
    config_map = client.CoreV1Api(cluster).read_namespaced_config_map("lema-train-1-config", "ml")
    assert yaml.safe_load(config_map.data["train.yaml"]) == settings.model_dump(mode="json")
    listed = client.BatchV1Api(cluster).list_namespaced_job("ml", label_selector="app.kubernetes.io/name=lema-train")
    assert [j.metadata.name for j in listed.items] == ["lema-train-1"]


def _dry_run(*overrides: str) -> list[dict[str, Any]]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = CliRunner().invoke(app, ["train", "submit", "--config", str(CLUSTER_CONFIG), "--dry-run", *sets])
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.output))


@pytest.mark.parametrize("kind", ["job", "pytorchjob"])
def test_dry_run_prints_manifests_that_validate_strictly_against_kubernetes_1_30(kind: str) -> None:
    documents = _dry_run(f"submit.kind={kind}", "submit.nodes=2")
    assert [d["kind"] for d in documents] == ["ConfigMap", "Job" if kind == "job" else "PyTorchJob"]
    config_map, job = documents
    pod = job["spec"]["template"] if kind == "job" else job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    # No schema for the PyTorchJob CRD here: its pod template is checked as what it is, a core/v1 PodTemplate.
    template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "worker"}, "template": pod}
    checked = [config_map, job] if kind == "job" else [config_map, template]
    for document in checked:
        kubernetes_validate.validate(document, "1.30", strict=True)
    # Runnable with the trainer image as-is: unprivileged on a read-only root, every written path a volume.
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/opt/lema/runs/train", "/home/lema/.cache", "/tmp", "/etc/lema"} <= mounts
    assert container["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
    run_policy = job["spec"] if kind == "job" else job["spec"]["runPolicy"]
    assert run_policy["activeDeadlineSeconds"] == 172800
    trained = yaml.safe_load(config_map["data"]["train.yaml"])
    assert trained["store"]["kind"] == "minio", "a retried pod resumes only from the object store"


def test_dry_run_is_what_the_cluster_receives(emulator: ApiServerEmulator, cluster: client.ApiClient) -> None:
    printed = _dry_run()
    submit_job(load_train_settings(CLUSTER_CONFIG), cluster, follow=False)
    assert emulator.received == printed


def test_a_local_store_is_refused_before_anything_is_created() -> None:
    result = CliRunner().invoke(
        app, ["train", "submit", "--config", str(REPO / "training_job" / "example.yaml"), "--dry-run"]
    )
    assert result.exit_code == 1
    assert "store.kind is 'local'" in result.output


def test_the_config_map_belongs_to_the_job(cluster: client.ApiClient) -> None:
    settings = _settings(name="owned", namespace="ml")
    submit_job(settings, cluster, follow=False)
    job = client.BatchV1Api(cluster).read_namespaced_job("owned", "ml")
    config_map = client.CoreV1Api(cluster).read_namespaced_config_map("owned-config", "ml")
    (owner,) = config_map.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name, owner.uid) == ("batch/v1", "Job", "owned", job.metadata.uid)


def test_submitting_the_same_name_twice_names_what_exists(cluster: client.ApiClient) -> None:
    settings = _settings(name="twice", namespace="ml")
    submit_job(settings, cluster, follow=False)
    with pytest.raises(SubmitError, match=r"configmap ml/twice-config: 409"):
        submit_job(settings, cluster, follow=False)
    # The job itself taken (its config gone): the new ConfigMap is removed again, so a later submit can succeed.
    client.CoreV1Api(cluster).delete_namespaced_config_map("twice-config", "ml")
    with pytest.raises(SubmitError, match=r"job ml/twice: 409"):
        submit_job(settings, cluster, follow=False)
    with pytest.raises(ApiException, match="404"):
        client.CoreV1Api(cluster).read_namespaced_config_map("twice-config", "ml")


def _pod(name: str, status: dict[str, Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "lema-train", "app.kubernetes.io/instance": name}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-x1", "labels": labels}, "status": status}


PULL_FAILED = {"containerStatuses": [{"name": "train", "image": "lema-trainer:0.1.0", "imageID": "", "ready": False,
    "restartCount": 0, "state": {"waiting": {
    "reason": "ImagePullBackOff", "message": 'Back-off pulling image "lema-trainer:0.1.0"'}}}]}  # fmt: skip
UNSCHEDULABLE = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "lastTransitionTime": "2026-01-01T00:00:00Z", "message": "0/3 nodes have nvidia.com/gpu"}]}  # fmt: skip


@pytest.mark.parametrize(
    "status, seconds_later, expected",
    [
        (PULL_FAILED, 0, r"job ml/stuck: pod stuck-x1: ImagePullBackOff: Back-off pulling image .*stopped following"),
        (UNSCHEDULABLE, 901, r"pod stuck-x1: Unschedulable for 901s: 0/3 nodes have nvidia.com/gpu"),
    ],
)
def test_following_stops_when_a_pod_cannot_start(
    cluster: client.ApiClient, status: dict[str, Any], seconds_later: float, expected: str
) -> None:
    client.CoreV1Api(cluster).create_namespaced_pod("ml", _pod("stuck", status))
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    polls: list[float] = []
    with pytest.raises(SubmitError, match=expected):
        submit_job(
            _settings(name="stuck", namespace="ml"), cluster, sleep=polls.append, clock=lambda: start + seconds_later
        )
    assert polls == []


def test_an_unschedulable_pod_is_waited_for_a_while(cluster: client.ApiClient) -> None:
    client.CoreV1Api(cluster).create_namespaced_pod("ml", _pod("pending", UNSCHEDULABLE))
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    sleep = _finish_when_polled(cluster, "pending", "ml", "Complete")
    assert submit_job(_settings(name="pending", namespace="ml"), cluster, sleep=sleep, clock=lambda: start + 60) == (
        "Succeeded"
    )


def test_pytorchjob_for_several_nodes(cluster: client.ApiClient) -> None:
    settings = _settings(kind="pytorchjob", name="multi", namespace="ml", nodes=3, gpus=8)
    submit_job(settings, cluster, follow=False)
    job = client.CustomObjectsApi(cluster).get_namespaced_custom_object(
        "kubeflow.org", "v1", "ml", "pytorchjobs", "multi"
    )
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "8"
    resources = replicas["Worker"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]


def test_cli_submit_follows_the_job_to_the_state_set_on_it(
    cluster: client.ApiClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Outside a cluster the CLI reads its credentials from a kubeconfig.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": cluster.configuration.host}}],
                "users": [{"name": "tester", "user": {"token": "unused"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "current-context": "emulator",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    def fail_the_job_once_created() -> None:
        batch = client.BatchV1Api(cluster)
        for _ in range(600):
            try:
                batch.read_namespaced_job("cli", "lema")
                break
            except ApiException:
                time.sleep(0.05)
        status = {"conditions": [{"type": "Failed", "status": "True"}]}
        batch.patch_namespaced_job_status("cli", "lema", {"status": status})

    controller = threading.Thread(target=fail_the_job_once_created, daemon=True)
    controller.start()
    result = CliRunner().invoke(
        app,
        ["train", "submit", "--config", str(CLUSTER_CONFIG),
         "--set", "submit.name=cli", "--set", "submit.poll_seconds=0.05"],
    )  # fmt: skip
    controller.join(30)
    assert result.exit_code == 1, result.output
    assert "job lema/cli: Failed" in result.output
