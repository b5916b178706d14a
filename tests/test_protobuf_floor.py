"""gamjeong runs on the oldest protobuf and grpcio its pyproject allows (the floor of its generated stubs): a server
started on exactly those runtimes answers Classify, the Open Inference Protocol's ModelInfer, health and reflection.

The dev install has a newer protobuf (6.x, through tritonclient); the floor versions are installed aside with pip into
the user cache (once; about 100 MB, mostly grpcio and onnx) and put first on the path of a child process. Offline the
test skips, except in CI (CI=true), where a skip would hide that the floor is untested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gamjeong.api import codegen

# An onnx that accepts protobuf 5 (1.20.1 asks protobuf >= 4.25.1; 1.23.2 asks >= 6.31.1): what pip picks for a
# service that pins protobuf 5 is one of these, since gamjeong's own requirement is onnx>=1.16.
ONNX_FOR_PROTOBUF_5 = "1.20.1"

_CHILD = r"""
import asyncio, struct, sys, warnings
warnings.filterwarnings("error", message=".*[Pp]rotobuf.*")  # a gencode/runtime mismatch warning fails the test
import google.protobuf, grpc
print("runtimes", google.protobuf.__version__, grpc.__version__, flush=True)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from gamjeong.api.inference import open_inference_grpc_pb2 as oip, open_inference_grpc_pb2_grpc as oip_grpc
from gamjeong.clients import AsyncEmotionClient
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

async def main():
    server = GamjeongServer(load_settings(model=sys.argv[1], host="127.0.0.1", port=0, metrics_port=-1))
    await server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        async with AsyncEmotionClient(address, max_attempts=1) as client:
            (result,) = await client.classify(["오늘 정말 행복해요"])
            info = await client.model_info()
        async with grpc.aio.insecure_channel(address) as channel:
            text = "오늘 정말 행복해요".encode()
            request = oip.ModelInferRequest(model_name=info.model_name, raw_input_contents=[struct.pack("<I", len(text)) + text])
            request.inputs.add(name="text", datatype="BYTES", shape=[1])
            response = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            services = [s.name async for answer in stream for s in answer.list_services_response.service]
    finally:
        await server.stop(0)
    import numpy as np
    probabilities = np.frombuffer(response.raw_output_contents[0], "<f4")
    assert abs(float(probabilities[result.label_id]) - result.score) < 1e-4, (probabilities, result)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "inference.GRPCInferenceService" in services, services
    print("served", result.label, services, flush=True)

asyncio.run(main())
"""


def _floors() -> dict[str, str]:
    pyproject = (codegen.REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = dict(
        re.findall(r'^\s+"(protobuf|grpcio|grpcio-health-checking|grpcio-reflection)>=([\d.]+)', pyproject, re.M)
    )
    assert set(found) == {"protobuf", "grpcio", "grpcio-health-checking", "grpcio-reflection"}, found
    return found


def _floor_packages(floors: dict[str, str]) -> Path:
    """The floor runtimes installed aside (cached by version), or a skip where pip cannot reach its index."""
    pins = [f"{name}=={version}" for name, version in sorted(floors.items())] + [f"onnx=={ONNX_FOR_PROTOBUF_5}"]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gamjeong" / "runtime-floor"
    target = cache / "-".join(p.replace("==", "_") for p in pins)
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(partial), *pins]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        message = f"cannot install the floor runtimes ({' '.join(pins)}): {done.stderr.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    partial.rename(target)
    return target


def test_a_server_runs_on_the_oldest_protobuf_and_grpcio_allowed(tiny_int8_dir: Path) -> None:
    floors = _floors()
    packages = _floor_packages(floors)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(packages), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tiny_int8_dir)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"runtimes {floors['protobuf']} {floors['grpcio']}\n" in done.stdout, done.stdout
    assert "served " in done.stdout
