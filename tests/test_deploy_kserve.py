"""deploy/kserve: the InferenceService is a custom resource, which the Kubernetes core schema does not know. Its pod
part (the predictor's PodSpec fields) is validated as a Pod against the same pinned Kubernetes schema as deploy/k8s,
the rest is checked for KServe's shape, and what the container tells the server (variables, port, probe paths) is what
`gamjeong serve` accepts and serves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT
from test_deploy_k8s import KUBERNETES_VERSION, SETTING_VARIABLES

from gamjeong.server.settings import ServerSettings

MANIFEST = REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
# serving.kserve.io/v1beta1 PredictorSpec: its own fields (ComponentExtensionSpec and the model frameworks, of which
# a custom predictor uses none); everything else in it is an inline core PodSpec.
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}
KSERVE_ANNOTATIONS = {
    "serving.kserve.io/deploymentMode",
    "serving.kserve.io/enable-prometheus-scraping",
    "prometheus.kserve.io/port",
    "prometheus.kserve.io/path",
}


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    return document


def _container(service: dict[str, Any]) -> dict[str, Any]:
    (container,) = service["spec"]["predictor"]["containers"]
    return container


def test_the_resource_has_kserves_shape(service) -> None:
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert set(service) == {"apiVersion", "kind", "metadata", "spec"} and set(service["spec"]) == {"predictor"}
    assert set(service["metadata"]["annotations"]) <= KSERVE_ANNOTATIONS
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Serverless")
    predictor = service["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"] and predictor["scaleMetric"] in ("cpu", "memory")
    container = _container(service)
    assert container["name"] == "kserve-container"  # KServe finds the serving container by this name
    # One routed port (Knative allows one; KServe routes the first): HTTP/1 for REST, h2c for gRPC.
    (port,) = container["ports"]
    assert port["name"] in ("http1", "h2c")


def test_the_pod_part_is_valid_kubernetes(service) -> None:
    import kubernetes_validate

    pod_spec = {k: v for k, v in service["spec"]["predictor"].items() if k not in KSERVE_PREDICTOR_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": service["metadata"]["name"]}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)  # strict: unknown fields fail
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"predictor pod spec: {exc.message} at {'/'.join(str(p) for p in exc.path)}")


def test_the_container_only_sets_what_gamjeong_serve_accepts_and_probes_what_it_serves(service) -> None:
    from gamjeong.server.http.oip import oip_router

    container = _container(service)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.pop("STORAGE_URI").split("://")[0] in ("pvc", "gs", "s3", "https", "hf")  # KServe's, not ours
    unknown = set(env) - set(SETTING_VARIABLES)
    assert not unknown, f"variables gamjeong serve does not read: {unknown}"
    settings = ServerSettings(**{SETTING_VARIABLES[name]: value for name, value in env.items()})
    assert str(settings.model) == "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
    assert "command" not in container and "args" not in container  # the image's entrypoint, `gamjeong serve`
    (port,) = container["ports"]
    assert port["containerPort"] == (settings.http_port if port["name"] == "http1" else settings.port)
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(settings.metrics_port)
    routes = {route.path for route in oip_router(SimpleNamespace(servicer=None)).routes}  # type: ignore[arg-type]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["port"] == settings.http_port and check["path"] in routes, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    drain, grace = float(env["GAMJEONG_DRAIN_S"]), float(env["GAMJEONG_GRACE_S"])
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain <= grace
    assert service["spec"]["predictor"]["terminationGracePeriodSeconds"] >= grace + 5
    threads, instances = int(env["GAMJEONG_INTRA_OP_THREADS"]), int(env["GAMJEONG_INSTANCES"])
    assert threads * instances == int(container["resources"]["requests"]["cpu"])
