"""deploy/k8s/serving.yaml cannot run here (no cluster): each manifest is read into the Kubernetes
client's own models (as the API server would decode it), and what ties them to the server is
checked: the command is a valid `serve` command line, the probes and the Service hit the
server's port and its /health and /ready routes, the HPA scales that Deployment, and the pods
get the same ConfigMap and Secret as the Dagster run pods (deploy/k8s/dagster.yaml)."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KINDS = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
}


class Decoded:
    def __init__(self, data: str) -> None:
        self.data = data


@pytest.fixture(scope="module")
def manifests() -> dict:
    from kubernetes.client import ApiClient

    client = ApiClient()
    docs = list(yaml.safe_load_all((DEPLOY / "serving.yaml").read_text()))
    assert sorted(d["kind"] for d in docs) == sorted(KINDS)
    decoded = {}
    for doc in docs:
        model = client.deserialize(Decoded(json.dumps(doc)), KINDS[doc["kind"]])
        # Nothing dropped: the model knows every field the manifest sets.
        assert client.sanitize_for_serialization(model) == doc, doc["kind"]
        decoded[doc["kind"]] = model
    return decoded


def serve_arguments(command: list[str]) -> argparse.Namespace:
    """The command line parsed as `python -m mlops_assets serve` parses it."""
    from mlops_assets.cli import add_spec_arguments
    from mlops_assets.serving.server import add_serve_arguments

    assert command[:4] == ["python", "-m", "mlops_assets", "serve"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_spec_arguments(parser)
    add_serve_arguments(parser)
    return parser.parse_args(command[4:])


def test_serving_manifests_fit_the_server(manifests: dict) -> None:
    from mlops_assets.serving.app import create_app
    from mlops_assets.serving.metrics import ServingMetrics

    deployment, service = manifests["Deployment"], manifests["Service"]
    [container] = deployment.spec.template.spec.containers
    args = serve_arguments(container.command)
    assert args.host == "0.0.0.0"
    [port] = container.ports
    assert (port.container_port, port.name) == (args.port, "http")

    routes = {route.path for route in create_app({}, ServingMetrics()).routes}
    probes = {
        "startup": container.startup_probe,
        "readiness": container.readiness_probe,
        "liveness": container.liveness_probe,
    }
    assert probes["readiness"].http_get.path == "/ready"
    assert probes["liveness"].http_get.path == probes["startup"].http_get.path == "/health"
    for probe in probes.values():
        assert probe.http_get.path in routes and probe.http_get.port == "http"

    selector = deployment.spec.selector.match_labels
    assert selector.items() <= deployment.spec.template.metadata.labels.items()
    assert service.spec.selector == selector
    [service_port] = service.spec.ports
    assert service_port.target_port == "http"

    hpa = manifests["HorizontalPodAutoscaler"]
    target = hpa.spec.scale_target_ref
    assert (target.kind, target.name) == ("Deployment", deployment.metadata.name)
    assert hpa.spec.min_replicas >= 2 and container.resources.requests["cpu"]
    assert manifests["PodDisruptionBudget"].spec.selector.match_labels == selector


def test_serving_pods_get_the_run_pods_settings(manifests: dict) -> None:
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    launcher = instance["run_launcher"]["config"]
    spec = manifests["Deployment"].spec.template.spec
    [container] = spec.containers
    env = {e.name: e.value for e in container.env}
    assert env["MLOPS_PROFILE"] == "production"
    assert env["DAGSTER_HOME"] == launcher["dagster_home"]
    assert [s.config_map_ref.name for s in container.env_from if s.config_map_ref] == launcher[
        "env_config_maps"
    ]
    assert [s.secret_ref.name for s in container.env_from if s.secret_ref] == launcher[
        "env_secrets"
    ]
    volumes = {v.name: v for v in spec.volumes}
    assert volumes["dagster-instance"].config_map.name == launcher["instance_config_map"]
    mounts = {m.mount_path: m for m in container.volume_mounts}
    assert mounts[f"{launcher['dagster_home']}/dagster.yaml"].sub_path == "dagster.yaml"
    assert volumes[mounts[launcher["dagster_home"]].name].empty_dir is not None  # writable
    assert spec.service_account_name == launcher["service_account_name"]
