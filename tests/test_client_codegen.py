"""The committed stubs in gamjeong/api/v1 are exactly what `make protos` generates from protos/."""

from __future__ import annotations

import re
from pathlib import Path

from gamjeong.api import codegen

# Lines that name the generator's version: a newer grpcio-tools in CI must not make identical stubs look stale.
_VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version:.*|GRPC_GENERATED_VERSION = .*|\s+_runtime_version\.Domain\.PUBLIC,\n(\s+\d+,\n){3})",
    re.MULTILINE,
)


def normalised(text: str) -> str:
    return _VERSION_LINES.sub("<version>", text)


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["emotion_pb2.py", "emotion_pb2.pyi", "emotion_pb2_grpc.py"]
    committed = sorted(p.name for p in codegen.STUBS_DIR.iterdir() if p.name.endswith(codegen.GENERATED_SUFFIXES))
    assert committed == names, "gamjeong/api/v1 holds stubs of protos that no longer exist: run `make protos`"
    for path in written:
        fresh = normalised(path.read_text(encoding="utf-8"))
        old = normalised((codegen.STUBS_DIR / path.name).read_text(encoding="utf-8"))
        assert fresh == old, f"gamjeong/api/v1/{path.name} is stale: run `make protos` and commit the result"


def test_generated_imports_point_at_the_api_package(tmp_path: Path) -> None:
    grpc_stub = (codegen.STUBS_DIR / "emotion_pb2_grpc.py").read_text(encoding="utf-8")
    assert "from gamjeong.api.v1 import emotion_pb2" in grpc_stub
    assert "from gamjeong.v1 " not in grpc_stub
    assert codegen.rewrite_imports("import gamjeong.v1.emotion_pb2\n") == "import gamjeong.api.v1.emotion_pb2\n"
    from gamjeong.api.v1 import emotion_pb2

    service = emotion_pb2.DESCRIPTOR.services_by_name["EmotionClassifier"]
    assert service.full_name == "gamjeong.v1.EmotionClassifier"
    assert {m.name for m in service.methods} == {"Classify", "ClassifyStream", "ClassifyChat", "GetModelInfo"}


def test_the_clients_package_still_offers_the_stubs() -> None:
    import gamjeong.clients.v1.emotion_pb2_grpc as old_grpc
    from gamjeong.api.v1 import emotion_pb2, emotion_pb2_grpc
    from gamjeong.clients.v1 import emotion_pb2 as old

    assert old is emotion_pb2 and old_grpc is emotion_pb2_grpc
