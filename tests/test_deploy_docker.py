"""deploy/docker (issue 14): the images cannot be built here (no container registry to pull the base images from), so
this checks what can be checked without building them: every file they copy exists, every GAMJEONG_* variable they
set is a `gamjeong serve` setting with a valid value, the exposed ports are the ones the server listens on, the user is
not root, and the CPU image installs the serving install only."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from gamjeong.server.settings import ServerSettings

DOCKER = REPO_ROOT / "deploy" / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
SETTING_VARIABLES = {f"GAMJEONG_{name.upper()}": name for name in ServerSettings.model_fields}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), line.partition(" ")[2].strip()) for line in lines if line and line[0] != "#"]


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for _, a in instructions if _ == "ARG" and "=" in a for k, v in [a.split("=", 1)]}


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in instructions:
        if name == "ENV":
            env |= dict(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_path_exists(dockerfile: str) -> None:
    instructions = _instructions(DOCKER / dockerfile)
    args = _args(instructions)
    copies = [a for name, a in instructions if name == "COPY" and not a.startswith("--from")]
    assert copies
    for arguments in copies:
        *sources, _destination = arguments.split()
        for source in sources:
            source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source)
            assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY {source} (relative to the repository root)"
    assert (DOCKER / f"{dockerfile}.dockerignore").is_file()  # BuildKit reads <Dockerfile>.dockerignore


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_runs_gamjeong_serve_with_settings_it_accepts(dockerfile: str) -> None:
    instructions = _instructions(DOCKER / dockerfile)
    env = _env(instructions)
    variables = {k: v for k, v in env.items() if k.startswith("GAMJEONG_")}
    unknown = set(variables) - set(SETTING_VARIABLES)
    assert not unknown, f"{dockerfile} sets variables gamjeong serve does not read: {unknown}"
    settings = ServerSettings(**{SETTING_VARIABLES[k]: v for k, v in variables.items()})
    assert str(settings.model) == "/model" and settings.host == "0.0.0.0"
    (entrypoint,) = [a for name, a in instructions if name == "ENTRYPOINT"]
    assert entrypoint == '["gamjeong", "serve"]'
    exposed = {int(p) for name, a in instructions if name == "EXPOSE" for p in a.split()}
    assert exposed == {settings.port, settings.http_port, settings.metrics_port}
    (user,) = [a for name, a in instructions if name == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()  # numeric: Kubernetes can check runAsNonRoot


def test_the_cpu_image_installs_the_serving_install_only() -> None:
    runs = " ".join(a for name, a in _instructions(DOCKER / "Dockerfile") if name == "RUN")
    # the serving install and tracing's SDK; no [train]/[export] extra
    assert 'pip install "/src[otel]"' in runs and "train" not in runs and "export" not in runs
    base = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8").split("[project.optional-dependencies]")[0]
    for heavy in ("torch", "transformers", "optimum", "pandas", "datasets"):
        assert f'"{heavy}' not in base, f"{heavy} is in the base (serving) install"


def test_the_cuda_image_swaps_in_onnxruntime_gpu() -> None:
    runs = " ".join(a for name, a in _instructions(DOCKER / "Dockerfile.cuda") if name == "RUN")
    assert "pip uninstall -y onnxruntime" in runs and "onnxruntime-gpu" in runs
    assert runs.index("uninstall -y onnxruntime") < runs.index("onnxruntime-gpu")
    assert _env(_instructions(DOCKER / "Dockerfile.cuda"))["GAMJEONG_DEVICE"] == "cuda"
