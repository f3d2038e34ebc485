"""`lema train submit` against kmock's Kubernetes emulator: a real HTTP API that the official client talks to."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from lema.cli import app
from lema.training.config import TrainSettings, load_train_settings
from lema.training.launcher import SubmitError, submit_job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster() -> Iterator[client.ApiClient]:
    """The emulator served on a local port from its own event loop, and an API client pointed at it."""
    ready, stop_box, url_box = threading.Event(), [], []

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
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
    config = load_train_settings(REPO / "training_job" / "example.yaml").model_dump(mode="json")
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
    assert secret_refs["LEMA_S3_SECRET_KEY"].name == "lema-minio"
    assert secret_refs["LEMA_S3_SECRET_KEY"].key == "secret-key"
    # The pod trains exactly the submitted config: it is mounted from a ConfigMap.
    config_map = client.CoreV1Api(cluster).read_namespaced_config_map("lema-train-1-config", "ml")
    assert yaml.safe_load(config_map.data["train.yaml"]) == settings.model_dump(mode="json")
    listed = client.BatchV1Api(cluster).list_namespaced_job("ml", label_selector="app.kubernetes.io/name=lema-train")
    assert [j.metadata.name for j in listed.items] == ["lema-train-1"]


def test_submitting_the_same_name_twice_is_refused(cluster: client.ApiClient) -> None:
    settings = _settings(name="twice", namespace="ml")
    submit_job(settings, cluster, follow=False)
    with pytest.raises(SubmitError, match=r"job ml/twice: 409"):
        submit_job(settings, cluster, follow=False)


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
        ["train", "submit", "--config", str(REPO / "training_job" / "example.yaml"),
         "--set", "submit.name=cli", "--set", "submit.poll_seconds=0.05"],
    )  # fmt: skip
    controller.join(30)
    assert result.exit_code == 1, result.output
    assert "job lema/cli: Failed" in result.output
