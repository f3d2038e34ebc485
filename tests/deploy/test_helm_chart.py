"""The Helm chart over a values matrix: lint, schema-valid manifests, and the fields a platform team relies on."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from deploy_testing import (
    CHART_DIR,
    KUBERNETES_VERSION,
    NAMESPACE,
    REPO,
    VALUES_CASES,
    Manifest,
    all_problems,
    config_file,
    of_kind,
    render,
    render_notes,
    workloads,
)

from lema.config import load_settings
from lema.pipeline import WORKERS
from lema.prompts import load_prompt
from lema.records import Task
from lema.runtime.settings import SERVICES, ServiceSettings
from lema.training.config import load_train_settings

# lema's Kafka wiring: the topics each service consumes (what KEDA must watch).
# The topics each service consumes, from the pipeline's own wiring, so the chart cannot drift from it.
INPUT_TOPICS = {name: set(worker.inputs) for name, worker in WORKERS.items()}
# What the stages load: (kind, task), task-specific templates first.
PROMPTS_LEMA_LOADS: list[tuple[str, Task | None]] = [
    ("sample", "gsm8k"),
    ("sample", "math"),
    ("sample", "mcq"),
    ("correct", "gsm8k"),
    ("correct", "math"),
    ("correct", "mcq"),
    ("evolve", None),
]
SECRET_LIKE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


@pytest.fixture(scope="module", params=list(VALUES_CASES))
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def values(case: str) -> dict[str, Any]:
    """The values Helm would use: chart defaults coalesced with the case's overrides."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        merged: dict[str, Any] = chart.merge_values(VALUES_CASES[case])
    return merged


@pytest.fixture(scope="module")
def manifests(case: str) -> list[Manifest]:
    return render(VALUES_CASES[case])


def service_deployments(manifests: list[Manifest]) -> dict[str, Manifest]:
    by_component = {
        m.body["metadata"]["labels"]["app.kubernetes.io/component"]: m for m in of_kind(manifests, "Deployment")
    }
    return {service: by_component[service] for service in SERVICES if service in by_component}


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_chart_passes_helm_lint(case: str) -> None:
    report = helm_python.lint(
        CHART_DIR, VALUES_CASES[case], strict=True, with_subcharts=True, namespace=NAMESPACE,
        kube_version=f"v{KUBERNETES_VERSION}",
    )  # fmt: skip
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    assert not findings and not report["errors"], "\n".join(findings + report["errors"])


def test_every_manifest_matches_the_kubernetes_schema(manifests: list[Manifest]) -> None:
    assert manifests
    problems = all_problems(manifests)
    assert not problems, "\n".join(problems)


def test_services_probe_liveness_apart_from_readiness_and_wait_for_model_loading(
    manifests: list[Manifest], values: dict[str, Any]
) -> None:
    """Startup/liveness: the port accepts connections (a dependency outage restarts nothing). Readiness: the
    server's grpc.health.v1 status, which follows broker and store health; over TLS when TLS is on."""
    deployments = service_deployments(manifests)
    assert set(deployments) == {name for name in SERVICES if values["services"][name]["enabled"]}
    grpc_port = values["ports"]["grpc"]
    for service, deployment in deployments.items():
        (container,) = deployment.body["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["tcpSocket"] == {"port": "grpc"}, f"{deployment.where}: {probe}"
        readiness = container["readinessProbe"]
        if values["tls"]["enabled"]:
            command = readiness["exec"]["command"]
            assert command[0] == "grpc-health-check" and command[-1] == f"127.0.0.1:{grpc_port}", deployment.where
            assert command[command.index("--ca") + 1] == f"{values['tls']['mountPath']}/ca.crt", deployment.where
        else:
            assert readiness["grpc"] == {"port": grpc_port}, f"{deployment.where}: readinessProbe"
        startup = container["startupProbe"]
        window = startup["periodSeconds"] * startup["failureThreshold"]
        assert window >= values["services"][service]["startupSeconds"], f"{deployment.where}: startup window {window}s"
        assert container["args"] == ["serve", service, "--config", "/etc/lema/config.yaml"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": values["ports"]["metrics"]}


def test_service_command_lines_parse_with_the_lema_cli() -> None:
    """The Deployments' args are a command line the real `lema` CLI accepts (parsed, not run)."""
    import typer.main

    from lema.cli import app

    lema = typer.main.get_command(app)
    for deployment in service_deployments(render({})).values():
        (container,) = deployment.body["spec"]["template"]["spec"]["containers"]
        command, *args = container["args"]
        with lema.make_context("lema", [command]) as group:
            subcommand = lema.get_command(group, command)  # type: ignore[attr-defined]
            assert subcommand is not None, f"{deployment.where}: lema has no command {command!r}"
            parsed = subcommand.make_context(command, list(args), parent=group).params
        assert parsed["service"] in SERVICES and parsed["config"] == Path("/etc/lema/config.yaml")


def test_model_servers_get_a_memory_backed_dev_shm(manifests: list[Manifest], values: dict[str, Any]) -> None:
    model_servers = [m for m in of_kind(manifests, "Deployment") if m.name.endswith("-vllm")]
    model_servers += [m for s, m in service_deployments(manifests).items() if values["services"][s]["modelServer"]]
    model_servers += [m for m in manifests if m.kind in ("Job", "PyTorchJob")]
    for manifest, template in workloads(model_servers):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in containers(template) for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{manifest.where}: no /dev/shm mount"
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", manifest.where


def test_every_pod_runs_non_root_without_capabilities(manifests: list[Manifest]) -> None:
    for manifest, template in workloads(manifests):
        pod = template["spec"]
        assert pod.get("automountServiceAccountToken") is False, f"{manifest.where}: mounts an API token"
        pod_context = pod.get("securityContext", {})
        for container in containers(template):
            context = container.get("securityContext", {})
            where = f"{manifest.where}: container {container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            if manifest.body["metadata"]["labels"].get("app.kubernetes.io/part-of") == "lema":
                assert context.get("readOnlyRootFilesystem") is True, where


def test_gpu_requests_equal_limits(manifests: list[Manifest], values: dict[str, Any]) -> None:
    gpu_containers = []
    for manifest, template in workloads(manifests):
        for container in containers(template):
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            for resource in {*requests, *limits} - {"cpu", "memory", "ephemeral-storage"}:
                where = f"{manifest.where}: {container['name']}: {resource}"
                assert str(requests.get(resource)) == str(limits.get(resource)), where
                gpu_containers.append((manifest, resource, int(limits[resource])))
    expected = []
    if values["vllm"]["enabled"]:
        expected.append(("Deployment", values["vllm"]["gpuResource"], values["vllm"]["gpus"]))
    if values["training"]["enabled"]:
        kind = "Job" if values["training"]["nodes"] == 1 else "PyTorchJob"
        expected += [(kind, values["training"]["gpuResource"], values["training"]["gpusPerNode"])] * min(
            values["training"]["nodes"], 2
        )
    assert sorted((m.kind, r, n) for m, r, n in gpu_containers) == sorted(expected)


def test_gpu_pods_take_runtime_class_node_selector_and_tolerations(
    manifests: list[Manifest], values: dict[str, Any]
) -> None:
    for section, selects_workload in (
        ("vllm", lambda m: m.kind == "Deployment" and m.name.endswith("-vllm")),
        ("training", lambda m: m.kind in ("Job", "PyTorchJob")),
    ):
        settings = values[section]
        for manifest, template in workloads([m for m in manifests if selects_workload(m)]):
            pod = template["spec"]
            assert pod.get("runtimeClassName") == (settings["runtimeClassName"] or None), manifest.where
            assert pod.get("nodeSelector", {}) == settings["nodeSelector"], manifest.where
            assert pod.get("tolerations", []) == settings["tolerations"], manifest.where


def test_no_secret_values_are_rendered(manifests: list[Manifest]) -> None:
    assert not of_kind(manifests, "Secret")
    for manifest, template in workloads(manifests):
        for container in containers(template):
            for env in container.get("env", []):
                if SECRET_LIKE.search(env["name"]):
                    assert "value" not in env, f"{manifest.where}: {env['name']} has a literal value"
                    assert "secretKeyRef" in env["valueFrom"], f"{manifest.where}: {env['name']} not from a Secret"


def test_notes_tell_how_to_create_every_secret_the_pods_read(case: str, manifests: list[Manifest]) -> None:
    notes = render_notes(VALUES_CASES[case])
    secret_names = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for _, template in workloads(manifests)
        for container in containers(template)
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    for name in secret_names:
        assert f"create secret generic {name} " in notes, f"NOTES.txt does not mention Secret {name}"


def test_labels_and_selectors_match(manifests: list[Manifest]) -> None:
    pods = workloads(manifests)
    for manifest, template in pods:
        if manifest.kind in ("Deployment", "StatefulSet"):
            selector = manifest.body["spec"]["selector"]["matchLabels"]
            assert selects(selector, template["metadata"]["labels"]), f"{manifest.where}: selector misses its pods"
            others = [m.where for m, t in pods if m is not manifest and selects(selector, t["metadata"]["labels"])]
            assert not others, f"{manifest.where}: selector also matches {others}"
    for service in of_kind(manifests, "Service"):
        matched = [t for _, t in pods if selects(service.body["spec"]["selector"], t["metadata"]["labels"])]
        assert len(matched) == 1, f"{service.where}: selects {len(matched)} workloads"
        container_ports = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in service.body["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{service.where}: targetPort {port['targetPort']}"
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        selector = pdb.body["spec"]["selector"]["matchLabels"]
        assert sum(selects(selector, t["metadata"]["labels"]) for _, t in pods) == 1, pdb.where
    deployments = {m.name for m in of_kind(manifests, "Deployment")}
    for scaler in of_kind(manifests, "HorizontalPodAutoscaler") + of_kind(manifests, "ScaledObject"):
        assert scaler.body["spec"]["scaleTargetRef"]["name"] in deployments, scaler.where
    services = of_kind(manifests, "Service")
    for monitor in of_kind(manifests, "ServiceMonitor"):
        selector = monitor.body["spec"]["selector"]["matchLabels"]
        watched = [s for s in services if selects(selector, s.body["metadata"]["labels"])]
        port_names = {p["name"] for s in watched for p in s.body["spec"]["ports"]}
        assert watched, f"{monitor.where}: selects no Service"
        for endpoint in monitor.body["spec"]["endpoints"]:
            assert endpoint["port"] in port_names, f"{monitor.where}: no Service has port {endpoint['port']}"


def test_pods_mount_config_maps_and_accounts_the_chart_creates(manifests: list[Manifest]) -> None:
    config_maps = {m.name for m in of_kind(manifests, "ConfigMap")}
    accounts = {m.name for m in of_kind(manifests, "ServiceAccount")}
    for manifest, template in workloads(manifests):
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{manifest.where}: volume {volume['name']}"
        account = template["spec"].get("serviceAccountName")
        assert account is None or account in accounts, f"{manifest.where}: ServiceAccount {account}"


def test_rendered_config_files_load_with_lemas_own_settings(
    manifests: list[Manifest], values: dict[str, Any], tmp_path: Path
) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_file(manifests, "lema-config", "config.yaml")))
    settings = load_settings(config_path, settings_cls=ServiceSettings)
    assert settings.bus.kind == "kafka" and settings.store.kind == "minio"
    if values["kafka"]["enabled"]:
        assert settings.bus.bootstrap_servers == "lema-kafka:9092"
    else:
        assert settings.bus.bootstrap_servers == values["externalKafka"]["bootstrapServers"]
    if values["minio"]["enabled"]:
        assert (settings.store.endpoint, settings.store.secure) == ("lema-minio:9000", False)
    else:
        external = values["externalMinio"]
        assert (settings.store.endpoint, settings.store.secure) == (external["endpoint"], external["secure"])
    assert (settings.server.grpc_port, settings.server.metrics_port) == (
        values["ports"]["grpc"],
        values["ports"]["metrics"],
    )
    assert settings.server.auth == ("token" if values["secrets"]["grpcToken"]["secretName"] else "none")
    server = values["config"]["server"]
    assert (settings.server.max_concurrent_rpcs, settings.server.blocking_threads) == (
        server["max_concurrent_rpcs"],
        server["blocking_threads"],
    )
    if values["training"]["enabled"]:
        train_path = tmp_path / "train.yaml"
        train_path.write_text(yaml.safe_dump(config_file(manifests, "lema-train-config", "train.yaml")))
        assert load_train_settings(train_path).store == settings.store


def test_prompt_overrides_are_mounted_where_lema_reads_them(
    manifests: list[Manifest], values: dict[str, Any], tmp_path: Path
) -> None:
    prompts_dir = config_file(manifests, "lema-config", "config.yaml").get("run", {}).get("prompts_dir")
    prompt_maps = [m for m in of_kind(manifests, "ConfigMap") if m.name == "lema-prompts"]
    if not values["prompts"]["templates"]:
        assert prompts_dir is None and not prompt_maps
        return
    assert prompts_dir == values["prompts"]["mountPath"]
    for file_name, text in prompt_maps[0].body["data"].items():
        (tmp_path / file_name).write_text(text)
    for kind, task in PROMPTS_LEMA_LOADS:
        mounted, packaged = load_prompt(kind, task, tmp_path), load_prompt(kind, task)
        assert replace(mounted, source="") == replace(packaged, source="")
    for manifest in service_deployments(manifests).values():
        template = manifest.body["spec"]["template"]
        (container,) = template["spec"]["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes[mounts[prompts_dir]]["configMap"]["name"] == "lema-prompts", manifest.where


def test_vllm_server_is_the_openai_llm_in_the_config(manifests: list[Manifest], values: dict[str, Any]) -> None:
    llms = config_file(manifests, "lema-config", "config.yaml")["llms"]
    if not values["vllm"]["enabled"]:
        assert not [m for m in manifests if m.name.endswith("-vllm")]
        return
    (service,) = [m for m in of_kind(manifests, "Service") if m.name.endswith("-vllm")]
    (port,) = service.body["spec"]["ports"]
    llm = llms[values["vllm"]["llmName"]]
    assert llm["backend"] == "openai"
    assert llm["base_url"] == f"http://{service.name}:{port['port']}/v1"
    (deployment,) = [m for m in of_kind(manifests, "Deployment") if m.name == service.name]
    args = deployment.body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--served-model-name={llm['model']}" in args


def test_each_autoscaled_service_has_one_autoscaler_and_no_fixed_replicas(
    manifests: list[Manifest], values: dict[str, Any]
) -> None:
    deployments = service_deployments(manifests)
    autoscaled = {d.name for s, d in deployments.items() if values["services"][s]["autoscaling"]["enabled"]}
    scaler_kind = "ScaledObject" if values["keda"]["enabled"] else "HorizontalPodAutoscaler"
    scalers = [m for m in manifests if m.kind in ("ScaledObject", "HorizontalPodAutoscaler")]
    assert {m.kind for m in scalers} <= {scaler_kind}
    assert sorted(m.body["spec"]["scaleTargetRef"]["name"] for m in scalers) == sorted(autoscaled)
    for deployment in deployments.values():
        has_replicas = "replicas" in deployment.body["spec"]
        assert has_replicas != (deployment.name in autoscaled), f"{deployment.where}: replicas vs autoscaler"


def test_keda_scales_each_service_on_the_lag_of_its_own_topics(manifests: list[Manifest]) -> None:
    bus = config_file(manifests, "lema-config", "config.yaml")["bus"]
    for scaled in of_kind(manifests, "ScaledObject"):
        service = scaled.body["metadata"]["labels"]["app.kubernetes.io/component"]
        triggers = scaled.body["spec"]["triggers"]
        assert {t["metadata"]["topic"] for t in triggers} == {bus["topic_prefix"] + t for t in INPUT_TOPICS[service]}
        for trigger in triggers:
            assert trigger["type"] == "kafka", scaled.where
            assert trigger["metadata"]["consumerGroup"] == bus["group_prefix"] + service, scaled.where
            assert trigger["metadata"]["bootstrapServers"] == bus["bootstrap_servers"], scaled.where


def test_dashboard_charts_the_metrics_lema_exports() -> None:
    manifests = render({"metrics": {"dashboard": {"enabled": True}}})
    (dashboard_map,) = [m for m in of_kind(manifests, "ConfigMap") if m.name.endswith("-dashboard")]
    assert dashboard_map.body["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map.body["data"]["lema.json"])
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\blema_[a-z_]+", target["expr"])
    }
    exported = exported_series()
    assert queried <= exported, f"the dashboard queries metrics lema does not define: {sorted(queried - exported)}"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for subject in ("per stage", "lag", "dead letters", "yield", "grpc latency", "training loss"):
        assert subject in titles


# The series each prometheus_client metric type exposes (a Counter named x or x_total exposes x_total).
SERIES_SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_count", "_sum"),
    "Summary": ("_count", "_sum"),
}


def exported_series() -> set[str]:
    """Every series the lema package defines, read from its metric constructors (Counter("name", ...), and the
    *MetricFamily of custom collectors), so the check needs neither torch nor a running service."""
    series = set()
    for module in (REPO / "services" / "lema").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            metric_type = node.func.id.removesuffix("MetricFamily")
            name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            if metric_type in SERIES_SUFFIXES and isinstance(name, str):
                base = name.removesuffix("_total") if metric_type == "Counter" else name
                series |= {base + suffix for suffix in SERIES_SUFFIXES[metric_type]}
    return series


def health_check_cli() -> Any:
    """The image's grpc-health-check script, whose command line the probes and the helm test must satisfy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("grpc_health_check", REPO / "docker" / "grpc_health_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_health_check_args(args: list[str]) -> Any:
    import argparse

    parsed: dict[str, Any] = {}

    def capture(self: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
        namespace = original(self, argv)
        parsed["args"] = namespace
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(SystemExit):
            health_check_cli().main(args)
    return parsed["args"]


def test_helm_test_checks_every_service_and_makes_one_check_call(
    manifests: list[Manifest], values: dict[str, Any]
) -> None:
    pods = [m for m in of_kind(manifests, "Pod") if m.body["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    if not values["tests"]["enabled"]:
        assert not pods
        return
    (pod,) = pods
    (container,) = pod.body["spec"]["containers"]
    assert container["command"] == ["grpc-health-check"]
    args = parse_health_check_args(container["args"])
    services = {m.name: m for m in of_kind(manifests, "Service")}
    grpc_port = values["ports"]["grpc"]
    enabled = [s for s in SERVICES if values["services"][s]["enabled"]]
    assert sorted(args.targets) == sorted(f"lema-{s}:{grpc_port}" for s in enabled)
    for target in args.targets:
        assert target.split(":")[0] in services, f"{pod.where}: no Service for {target}"
    assert args.check_answer == f"lema-checker:{grpc_port}"
    env = {e["name"]: e for e in container.get("env", [])}
    token = values["secrets"]["grpcToken"]
    if token["secretName"]:
        assert env["LEMA_GRPC_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": token["secretName"], "key": token["key"]}
    else:
        assert "LEMA_GRPC_TOKEN" not in env
    if values["tls"]["enabled"]:
        assert (str(args.ca), args.server_name) == (f"{values['tls']['mountPath']}/ca.crt", values["tls"]["serverName"])
        (volume,) = pod.body["spec"]["volumes"]
        assert volume["secret"]["secretName"] == values["tls"]["secretName"]
    else:
        assert args.ca is None


def test_readiness_command_over_tls_parses(manifests: list[Manifest], values: dict[str, Any]) -> None:
    if not values["tls"]["enabled"]:
        return
    for deployment in service_deployments(manifests).values():
        (container,) = deployment.body["spec"]["template"]["spec"]["containers"]
        args = parse_health_check_args(container["readinessProbe"]["exec"]["command"][1:])
        service = deployment.body["metadata"]["labels"]["app.kubernetes.io/component"]
        assert args.server_name == (values["tls"]["serverName"] or f"lema-{service}")


def test_tls_settings_point_at_the_mounted_certificate(manifests: list[Manifest], values: dict[str, Any]) -> None:
    server = config_file(manifests, "lema-config", "config.yaml")["server"]
    tls = values["tls"]
    if not tls["enabled"]:
        assert "tls_cert" not in server and "tls_key" not in server
        return
    assert (server["tls_cert"], server["tls_key"]) == (f"{tls['mountPath']}/tls.crt", f"{tls['mountPath']}/tls.key")
    for deployment in service_deployments(manifests).values():
        template = deployment.body["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in template["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in template["volumes"]}
        assert volumes[mounts[tls["mountPath"]]]["secret"]["secretName"] == tls["secretName"], deployment.where


def test_auth_is_on_by_default_from_an_existing_secret() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        defaults = chart.merge_values({})
    assert defaults["secrets"]["grpcToken"]["secretName"], "gRPC auth must be on by default"
    manifests = render({})
    assert config_file(manifests, "lema-config", "config.yaml")["server"]["auth"] == "token"
    assert not of_kind(manifests, "Secret")  # the token comes from a Secret the operator creates


def test_network_policies_admit_only_the_release_and_named_peers(
    manifests: list[Manifest], values: dict[str, Any]
) -> None:
    policies = of_kind(manifests, "NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        assert not policies
        return
    release_peer = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "lema"}}}
    guarded = [(m, t) for m, t in workloads(manifests) if m.kind in ("Deployment", "StatefulSet")]
    for manifest, template in guarded:
        labels = template["metadata"]["labels"]
        selecting = [p for p in policies if selects(p.body["spec"]["podSelector"]["matchLabels"], labels)]
        assert len(selecting) == 1, f"{manifest.where}: {len(selecting)} NetworkPolicies select its pods"
        spec = selecting[0].body["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        container_ports = {p["containerPort"] for c in containers(template) for p in c.get("ports", [])}
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            assert ports <= container_ports, f"{manifest.where}: policy opens ports its pods do not serve"
            if values["ports"]["metrics"] in ports:
                assert rule.get("from", []) == values["networkPolicy"]["metricsFrom"], manifest.where
            elif rule["from"] != values["networkPolicy"]["metricsFrom"]:  # gRPC, vLLM, Kafka, MinIO
                assert rule["from"][0] == release_peer, f"{manifest.where}: {rule['from']}"
                expected = (
                    [release_peer, *values["networkPolicy"]["grpcFrom"]]
                    if values["ports"]["grpc"] in ports
                    else [release_peer]
                )
                assert rule["from"] == expected, f"{manifest.where}: {rule['from']}"
    helm_tests = [m for m in of_kind(manifests, "Pod")]
    for pod in helm_tests:  # the helm test must be let in by the release peer
        assert selects(release_peer["podSelector"]["matchLabels"], pod.body["metadata"]["labels"]), pod.where


def test_headless_services_offer_every_pod_for_client_side_balancing(
    manifests: list[Manifest], values: dict[str, Any]
) -> None:
    services = {m.name: m for m in of_kind(manifests, "Service")}
    headless = {name: m for name, m in services.items() if name.endswith("-headless")}
    enabled = [s for s in SERVICES if values["services"][s]["enabled"]]
    if not values["service"]["headless"]:
        assert not headless
        return
    assert sorted(headless) == sorted(f"lema-{s}-headless" for s in enabled)
    for name, service in headless.items():
        plain = services[name.removesuffix("-headless")].body["spec"]
        assert service.body["spec"]["clusterIP"] == "None", service.where
        assert service.body["spec"]["selector"] == plain["selector"], service.where
        assert [p["name"] for p in service.body["spec"]["ports"]] == ["grpc"], f"{service.where}: scraped twice"


def test_topics_have_at_least_as_many_partitions_as_any_service_has_replicas(
    manifests: list[Manifest], values: dict[str, Any], tmp_path: Path
) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_file(manifests, "lema-config", "config.yaml")))
    topics = load_settings(config_path, settings_cls=ServiceSettings).topics
    assert (topics.partitions, topics.replication_factor) == (
        values["topics"]["partitions"], values["topics"]["replicationFactor"],
    )  # fmt: skip
    for service in SERVICES:
        spec = values["services"][service]
        most = spec["autoscaling"]["maxReplicas"] if spec["autoscaling"]["enabled"] else spec["replicas"]
        assert most <= topics.partitions, service


def test_more_replicas_than_partitions_is_refused() -> None:
    with pytest.raises(Exception, match=r"services\.checker may run 16 replicas but topics\.partitions is 8"):
        render({"services": {"checker": {"autoscaling": {"maxReplicas": 16}}}})


def test_bundled_kafka_and_minio_keep_their_data_on_volumes(manifests: list[Manifest], values: dict[str, Any]) -> None:
    for name in ("kafka", "minio"):
        if not values[name]["enabled"]:
            continue
        (statefulset,) = [m for m in of_kind(manifests, "StatefulSet") if m.name == f"lema-{name}"]
        claims = statefulset.body["spec"].get("volumeClaimTemplates", [])
        volumes = statefulset.body["spec"]["template"]["spec"].get("volumes", [])
        data = [v for v in volumes if v["name"] == "data"]
        if values[name]["persistence"]["enabled"]:
            assert [c["metadata"]["name"] for c in claims] == ["data"] and not data, statefulset.where
            assert claims[0]["spec"]["resources"]["requests"]["storage"] == values[name]["persistence"]["size"]
        else:
            assert not claims and data[0]["emptyDir"] == {}, statefulset.where


def test_images_pin_by_digest_when_given(manifests: list[Manifest], values: dict[str, Any]) -> None:
    digests = {
        values["image"]["repository"]: values["image"].get("digest", ""),
        values["vllm"]["image"]["repository"]: values["vllm"]["image"].get("digest", ""),
        values["kafka"]["image"]["repository"]: values["kafka"]["image"].get("digest", ""),
        values["minio"]["image"]["repository"]: values["minio"]["image"].get("digest", ""),
    }
    for manifest, template in workloads(manifests):
        for container in containers(template):
            repository = re.split(r"[@:]", container["image"], maxsplit=1)[0]
            if digests.get(repository):
                assert container["image"] == f"{repository}@{digests[repository]}", manifest.where
            else:
                assert "@" not in container["image"], manifest.where


def test_the_dataset_writer_scales_out_like_any_service() -> None:
    """Each writer replica commits its own partitions' offsets with its rows: no single-replica limit."""
    fixed = {"services": {"dataset-writer": {"replicas": 3, "autoscaling": {"enabled": False}}}}
    assert service_deployments(render(fixed))["dataset-writer"].body["spec"]["replicas"] == 3
    (scaler,) = [
        m
        for m in of_kind(render({}), "HorizontalPodAutoscaler")
        if m.body["spec"]["scaleTargetRef"]["name"].endswith("dataset-writer")
    ]
    assert scaler.body["spec"]["maxReplicas"] > 1


def test_server_limits_from_values_reach_the_services_config() -> None:
    manifests = render({"config": {"server": {"max_concurrent_rpcs": 7, "blocking_threads": 3}}})
    server = config_file(manifests, "lema-config", "config.yaml")["server"]
    assert (server["max_concurrent_rpcs"], server["blocking_threads"]) == (7, 3)
    assert server["grpc_port"] == 50051  # the chart's own server settings stay beside them
