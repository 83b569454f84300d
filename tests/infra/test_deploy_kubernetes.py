"""The Kubernetes manifests (infra/deploy/kubernetes): valid against the Kubernetes
schemas (kubernetes-validate, strict), one Deployment per service with probes on
/health, resources, replicas and settings the services accept; Kafka and PostgreSQL
are not deployed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aob.platform.settings import SERVICES, Settings, service_problem
from tests.infra.test_deploy_docker import tool

KUBERNETES = Path(__file__).parents[2] / "infra" / "deploy" / "kubernetes"
ROLES = [service for service in SERVICES if service != "dev"]
KUSTOMIZATION: dict[str, Any] = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())


def resources() -> list[dict[str, Any]]:
    found = []
    for name in KUSTOMIZATION["resources"]:
        found += [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]
    return found


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources() if r["kind"] == kind}


def container(role: str) -> dict[str, Any]:
    deployment = of_kind("Deployment")[f"aob-{role}"]
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    [only] = containers
    return only


def test_every_manifest_is_listed_and_valid_against_the_kubernetes_schemas() -> None:
    listed = set(KUSTOMIZATION["resources"])
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    files = [str(KUBERNETES / name) for name in sorted(listed)]
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_deployment_per_service_runs_its_role_and_scales_by_replicas() -> None:
    deployments = of_kind("Deployment")
    assert set(deployments) == {f"aob-{role}" for role in ROLES}
    counts = {item["name"]: item["count"] for item in KUSTOMIZATION["replicas"]}
    assert set(counts) == set(deployments)
    assert all(count >= 1 for count in counts.values())
    [image] = KUSTOMIZATION["images"]
    for role in ROLES:
        assert container(role)["args"] == [role]
        assert container(role)["image"] == image["name"]


@pytest.mark.parametrize("role", ROLES)
def test_probes_ask_health_on_the_port_the_service_listens_on(role: str) -> None:
    spec = container(role)
    [port] = spec["ports"]
    config = of_kind("ConfigMap")["aob-config"]["data"]
    assert port["containerPort"] == int(config["AOB_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    # A broker restart must not restart every pod: liveness gives up well after readiness.
    liveness, readiness = spec["livenessProbe"], spec["readinessProbe"]
    patience = liveness["periodSeconds"] * liveness["failureThreshold"]
    assert patience > readiness["periodSeconds"] * readiness["failureThreshold"]
    assert patience >= 60


@pytest.mark.parametrize("role", ROLES)
def test_each_service_requests_resources_and_runs_as_non_root(role: str) -> None:
    spec = container(role)
    assert {"cpu", "memory"} <= set(spec["resources"]["requests"])
    assert "memory" in spec["resources"]["limits"]
    pod = of_kind("Deployment")[f"aob-{role}"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("role", ROLES)
def test_the_settings_each_service_gets_are_valid(
    role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ConfigMap, Secret and the container's own env make settings the role accepts."""
    spec = container(role)
    sources = {
        ("ConfigMap", s["configMapRef"]["name"])
        if "configMapRef" in s
        else ("Secret", s["secretRef"]["name"])
        for s in spec["envFrom"]
    }
    assert sources == {("ConfigMap", "aob-config"), ("Secret", "aob-secrets")}
    env = {
        **of_kind("ConfigMap")["aob-config"]["data"],
        **of_kind("Secret")["aob-secrets"]["stringData"],
        **{item["name"]: item["value"] for item in spec.get("env", [])},
    }
    for name, value in env.items():
        assert name.startswith("AOB_")
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert service_problem(settings, role) is None


def test_api_and_fanout_have_a_service_on_their_pods() -> None:
    services = of_kind("Service")
    assert set(services) == {"aob-api", "aob-fanout"}
    for name, service in services.items():
        template = of_kind("Deployment")[name]["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        [port] = service["spec"]["ports"]
        assert port["targetPort"] == "http"


def test_kafka_and_postgres_are_external() -> None:
    kinds = {r["kind"] for r in resources()}
    assert kinds == {"Namespace", "ConfigMap", "Secret", "Deployment", "Service"}
    images = {
        c["image"]
        for d in of_kind("Deployment").values()
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"aob"}
