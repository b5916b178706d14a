"""deploy/k8s (issue 14): every overlay renders, every object is valid against the Kubernetes schema of a pinned
version, and what the Deployment tells the server (variables, ports, probes, grace periods) is what `gamjeong serve`
accepts and does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT
from kustomize_lite import render

from gamjeong.server.settings import ServerSettings

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The oldest Kubernetes the manifests are meant for: native gRPC probes are GA since 1.27; 1.32 is a supported release.
KUBERNETES_VERSION = "1.32.0"
SETTING_VARIABLES = {f"GAMJEONG_{name.upper()}": name for name in ServerSettings.model_fields}


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    overlay = K8S / "overlays" / request.param
    documents = render(overlay)
    binary = _kustomize_binary()
    if binary is not None:  # the real kustomize: it and kustomize_lite must agree object for object
        output = subprocess.run([*binary, str(overlay)], capture_output=True, text=True, timeout=120, check=True)
        real = [d for d in yaml.safe_load_all(output.stdout) if d]
        assert _by_kind(real) == _by_kind(documents), "kustomize_lite renders differently from kustomize"
    return request.param, _by_kind(documents)


def test_there_are_cpu_and_gpu_overlays() -> None:
    assert {"cpu", "gpu"} <= set(OVERLAYS)


def test_every_object_is_valid_kubernetes(rendered) -> None:
    import kubernetes_validate

    _, objects = rendered
    assert {key.split("/")[0] for key in objects} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for key, document in objects.items():
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # strict: unknown fields fail
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: {exc.message} at {'/'.join(str(p) for p in exc.path)}")


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment/gamjeong"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_deployment_only_sets_what_gamjeong_serve_accepts(rendered) -> None:
    _, objects = rendered
    container = _container(objects)
    env = _env(container)
    unknown = set(env) - set(SETTING_VARIABLES)
    assert not unknown, f"variables gamjeong serve does not read: {unknown}"
    # The values parse as the server's own settings would (types, ranges, cross-checks).
    settings = ServerSettings(**{SETTING_VARIABLES[name]: value for name, value in env.items()})
    assert "command" not in container  # the image's entrypoint, `gamjeong serve`
    for flag in container.get("args", []):  # none today; a flag added later must be one serve has
        from gamjeong.server.cli import _SETTING_NAMES

        assert flag.startswith("--") and flag[2:].split("=")[0].replace("-", "_") in _SETTING_NAMES
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "http": settings.http_port, "metrics": settings.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": settings.port, "service": ""}, probe
    annotations = objects["Deployment/gamjeong"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert settings.host in ("0.0.0.0", "[::]")  # reachable from the kubelet and the other pods


def test_drain_and_grace_fit_the_probes_and_the_kubelets_deadline(rendered) -> None:
    _, objects = rendered
    pod = objects["Deployment/gamjeong"]["spec"]["template"]["spec"]
    container = _container(objects)
    env = _env(container)
    drain, grace = float(env["GAMJEONG_DRAIN_S"]), float(env["GAMJEONG_GRACE_S"])
    readiness = container["readinessProbe"]
    # The readiness probe sees NOT_SERVING while the drain still serves, with time left for endpoint propagation.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain <= grace
    # SIGTERM to exit takes at most the grace period (server/app.py); the kubelet's SIGKILL comes after it.
    assert pod["terminationGracePeriodSeconds"] >= grace + 5
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model load measured at 2-12 s


def test_pods_run_as_the_images_non_root_user_on_a_read_only_root(rendered) -> None:
    _, objects = rendered
    pod = objects["Deployment/gamjeong"]["spec"]["template"]["spec"]
    container = _container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (REPO_ROOT / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # /tmp is the one writable mount; a model volume (overlays/model-volume) is mounted read-only
    assert {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} == {"/tmp"}


def test_services_pdb_and_hpa_point_at_the_pods(rendered) -> None:
    overlay, objects = rendered
    deployment = objects["Deployment/gamjeong"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in _container(objects)["ports"]}
    headless, cluster = objects["Service/gamjeong-headless"], objects["Service/gamjeong"]
    assert headless["spec"]["clusterIP"] == "None" and cluster["spec"]["type"] == "ClusterIP"
    for service in (headless, cluster):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = objects["PodDisruptionBudget/gamjeong"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler/gamjeong"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gamjeong"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu" and hpa["spec"]["minReplicas"] >= 2
    resources = _container(objects)["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    image = _container(objects)["image"]
    if overlay == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == 1 and _env(_container(objects))["GAMJEONG_DEVICE"] == "cuda"
        assert image.endswith(":cuda")
    else:
        assert "nvidia.com/gpu" not in resources["limits"] and image.endswith(":cpu")
        # ONNX Runtime would size its pool by the node's cores: the threads must match the pod's CPU.
        threads = int(_env(_container(objects))["GAMJEONG_INTRA_OP_THREADS"])
        instances = int(_env(_container(objects))["GAMJEONG_INSTANCES"])
        assert threads * instances == int(resources["requests"]["cpu"])
        assert _env(_container(objects))["GAMJEONG_SOLO"] == "false"  # it would also use the node's cores


def test_kustomize_lite_applies_json_patches_and_images(tmp_path: Path) -> None:
    """The fallback renderer on its own (so a CI machine without kustomize still tests what it does)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("resources: [d.yaml]\n")
    (base / "d.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec: {template: {spec: {containers: [{name: c, image: 'app:1', env: [{name: A, value: '1'}]}]}}}\n"
    )
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "p.yaml").write_text(
        "- {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: B, value: '2'}}\n"
        "- {op: replace, path: /metadata/name, value: x}\n"
    )
    (overlay / "kustomization.yaml").write_text(
        "resources: [../base]\nimages: [{name: app, newName: reg/app, newTag: '2'}]\n"
        "patches: [{path: p.yaml, target: {kind: Deployment, name: x}}]\n"
    )
    (document,) = render(overlay)
    container = document["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/app:2" and [e["name"] for e in container["env"]] == ["A", "B"]
    (overlay / "kustomization.yaml").write_text("resources: [../base]\nnamePrefix: p-\n")
    with pytest.raises(NotImplementedError):
        render(overlay)
