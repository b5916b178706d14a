"""The committed stubs in gamjeong/api describe exactly the protos in protos/ (what `make protos` generates), and come
from the pinned grpcio-tools whose gencode the pyproject's protobuf floor names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gamjeong.api import codegen

# What a different grpcio-tools writes differently for the same protos: its version, and cosmetics (typing imports,
# `class X(object)`, an f-string). The descriptor, the RPC paths and the typed fields are what must match.
_SERIALIZED = re.compile(r"AddSerializedFile\((b'.*?')\)\n", re.DOTALL)
_RPC_PATH = re.compile(r"'(/[\w.]+/\w+)'")
_PYI_LINES = re.compile(r"^\s*(class \w+|\w+_FIELD_NUMBER: .*|\w+: .*)$", re.MULTILINE)


def _descriptor(source: str) -> bytes:
    found = _SERIALIZED.search(source)
    assert found, "no serialized descriptor in a _pb2.py"
    return ast.literal_eval(found.group(1))


def _meaning(name: str, source: str) -> object:
    if name.endswith("_pb2.py"):
        return _descriptor(source), "DescriptorPool()" in source
    if name.endswith("_pb2_grpc.py"):
        return sorted(set(_RPC_PATH.findall(source))), [
            line for line in source.splitlines() if line.startswith("from ")
        ]
    return sorted(_PYI_LINES.findall(source))


@pytest.mark.parametrize("package", codegen.PACKAGES, ids=lambda p: p.python_package)
def test_committed_stubs_match_the_protos(tmp_path: Path, package: codegen.ProtoPackage) -> None:
    written = codegen.generate(tmp_path, package=package)
    names = sorted(p.name for p in written)
    stems = sorted(p.stem for p in codegen.proto_files(package=package))
    assert names == sorted(f"{s}{suffix}" for s in stems for suffix in codegen.GENERATED_SUFFIXES)
    committed = sorted(p.name for p in package.stubs_dir.iterdir() if p.name.endswith(codegen.GENERATED_SUFFIXES))
    assert committed == names, f"{package.stubs_dir} holds stubs of protos that no longer exist: run `make protos`"
    exact = codegen.tools_version() == codegen.PINNED_TOOLS  # the generator of the committed stubs: byte for byte
    for path in written:
        fresh, old = path.read_text(encoding="utf-8"), (package.stubs_dir / path.name).read_text(encoding="utf-8")
        stale = f"{package.python_package}.{path.name} is stale: run `make protos` and commit the result"
        assert (fresh == old) if exact else (_meaning(path.name, fresh) == _meaning(path.name, old)), stale


def test_the_stubs_gencode_is_the_protobuf_floor_of_the_install() -> None:
    """The stubs check the runtime at import (protobuf >= their gencode, grpcio >= their generator), so the pyproject's
    floors must be exactly those versions: lower and `pip install` allows a runtime that fails at import."""
    pyproject = (codegen.REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib is Python 3.11+
    floors = dict(re.findall(r'^\s+"(protobuf|grpcio[\w-]*)>=([\d.]+)', pyproject, re.MULTILINE))
    assert floors["protobuf"] == codegen.GENCODE
    assert floors["grpcio"] == floors["grpcio-health-checking"] == floors["grpcio-reflection"] == codegen.PINNED_TOOLS
    for package in codegen.PACKAGES:
        for stub in package.stubs_dir.glob("*_pb2.py"):
            assert f"# Protobuf Python Version: {codegen.GENCODE}\n" in stub.read_text(encoding="utf-8"), stub
        for stub in package.stubs_dir.glob("*_pb2_grpc.py"):
            assert f"GRPC_GENERATED_VERSION = '{codegen.PINNED_TOOLS}'" in stub.read_text(encoding="utf-8"), stub


def test_generated_imports_point_at_the_api_package(tmp_path: Path) -> None:
    grpc_stub = (codegen.STUBS_DIR / "emotion_pb2_grpc.py").read_text(encoding="utf-8")
    assert "from gamjeong.api.v1 import emotion_pb2" in grpc_stub
    assert "from gamjeong.v1 " not in grpc_stub
    assert codegen.rewrite_imports("import gamjeong.v1.emotion_pb2\n") == "import gamjeong.api.v1.emotion_pb2\n"
    from gamjeong.api.v1 import emotion_pb2

    service = emotion_pb2.DESCRIPTOR.services_by_name["EmotionClassifier"]
    assert service.full_name == "gamjeong.v1.EmotionClassifier"
    assert {m.name for m in service.methods} == {"Classify", "ClassifyStream", "ClassifyChat", "GetModelInfo"}


def test_the_inference_stubs_sit_beside_tritonclient_in_one_process() -> None:
    """tritonclient registers its own `inference.*` messages in protobuf's default pool; ours live in a pool of their
    own, so both import (either order) and read each other's bytes."""
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2

    from gamjeong.api.inference import open_inference_grpc_pb2 as oip

    assert oip.DESCRIPTOR.pool is not service_pb2.DESCRIPTOR.pool
    ours = oip.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x00\x00\x00a"])
    ours.inputs.add(name="text", datatype="BYTES", shape=[1])
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, list(theirs.inputs[0].shape), theirs.raw_input_contents[0]) == (
        "m",
        [1],
        b"\x01\x00\x00\x00a",
    )
    service = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name for m in service.methods} >= {"ServerLive", "ServerReady", "ModelReady", "ModelInfer"}


def test_the_clients_package_still_offers_the_stubs() -> None:
    import gamjeong.clients.v1.emotion_pb2_grpc as old_grpc
    from gamjeong.api.v1 import emotion_pb2, emotion_pb2_grpc
    from gamjeong.clients.v1 import emotion_pb2 as old

    assert old is emotion_pb2 and old_grpc is emotion_pb2_grpc
