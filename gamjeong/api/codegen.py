"""Generate the Python gRPC stubs in gamjeong/api from protos/ (`make protos` runs `python -m gamjeong.api.codegen`).

Two proto packages, each into its own Python package:
- `gamjeong.v1` (protos/gamjeong/v1, gamjeong's own API) -> gamjeong/api/v1;
- `inference` (protos/inference, the Open Inference Protocol of KServe and Triton) -> gamjeong/api/inference.

grpc_tools.protoc with `-I protos` writes `from gamjeong.v1 import emotion_pb2` style imports; those are rewritten to
the Python packages above. The `inference` stubs also get a descriptor pool of their own instead of protobuf's default
one: tritonclient (and KServe's SDK) register their own copy of the `inference.*` messages in the default pool, and a
second file defining the same names there fails at import ("duplicate symbol 'inference.ServerLiveRequest'"), so
without it a process could not hold both gamjeong and a Triton client. The wire format does not depend on the pool.

The committed stubs come from grpcio-tools PINNED_TOOLS (protobuf GENCODE gencode): gencode of protobuf 5.27 runs on
every runtime from 5.27.2 to 7.x, so gamjeong installs beside packages that pin protobuf 5.x or 6.x (tritonclient).
`make protos` runs exactly that version; tests/test_client_codegen.py regenerates with whatever grpcio-tools the dev
install has and fails when the committed stubs no longer describe the protos.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gamjeong.errors import GamjeongError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
API_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
# The generator of the committed stubs and the protobuf version of its gencode (the runtime floor in pyproject.toml).
PINNED_TOOLS = "1.66.2"
GENCODE = "5.27.2"


@dataclass(frozen=True)
class ProtoPackage:
    proto_dir: Path  # relative to PROTO_ROOT, e.g. gamjeong/v1 (proto package gamjeong.v1)
    python_package: str  # where its stubs are imported from, e.g. gamjeong.api.v1
    private_pool: bool = False  # register in a descriptor pool of its own (see the module docstring)

    @property
    def stubs_dir(self) -> Path:
        return API_DIR / self.python_package.rsplit(".", 1)[-1]

    def rewrite(self, source: str) -> str:
        """protoc's imports of this package -> the Python package; the private pool where asked for."""
        proto_module = ".".join(self.proto_dir.parts)
        source = re.sub(
            rf"^from {re.escape(proto_module)} import ", f"from {self.python_package} import ", source, flags=re.M
        )
        source = re.sub(rf"^import {re.escape(proto_module)}\.", f"import {self.python_package}.", source, flags=re.M)
        if self.private_pool:
            source = source.replace(
                "_descriptor_pool.Default().AddSerializedFile(", "_descriptor_pool.DescriptorPool().AddSerializedFile("
            )
        return source


V1 = ProtoPackage(Path("gamjeong") / "v1", "gamjeong.api.v1")
INFERENCE = ProtoPackage(Path("inference"), "gamjeong.api.inference", private_pool=True)
PACKAGES = (V1, INFERENCE)
# Older names, kept for gamjeong.clients.codegen and callers of the v1-only API.
PROTO_PACKAGE_DIR = V1.proto_dir
STUBS_DIR = V1.stubs_dir


def proto_files(proto_root: Path = PROTO_ROOT, package: ProtoPackage = V1) -> list[Path]:
    files = sorted((proto_root / package.proto_dir).glob("*.proto"))
    if not files:
        raise GamjeongError(f"No .proto files under '{proto_root / package.proto_dir}'.")
    return files


def rewrite_imports(source: str) -> str:
    return V1.rewrite(source)


def tools_version() -> str | None:
    """The installed grpcio-tools version, None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return None


def generate(output_dir: Path, proto_root: Path = PROTO_ROOT, package: ProtoPackage = V1) -> list[Path]:
    """Run protoc on every proto of one package and write the rewritten stubs flat into output_dir."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # grpcio-tools is a dev dependency
        raise GamjeongError("Generating stubs needs grpcio-tools; install it with `pip install -e '.[dev]'`.") from exc

    well_known_protos = Path(grpc_tools.__file__).parent / "_proto"
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        relative = [str(p.relative_to(proto_root)) for p in proto_files(proto_root, package)]
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known_protos}",
            f"--python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            *relative,
        ]
        if protoc.main(args) != 0:
            raise GamjeongError(f"protoc failed on {', '.join(relative)}; fix the proto files above.")
        written = []
        for generated in sorted((raw_dir / package.proto_dir).iterdir()):
            if not generated.name.endswith(GENERATED_SUFFIXES):
                continue
            target = output_dir / generated.name
            target.write_text(package.rewrite(generated.read_text(encoding="utf-8")), encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=API_DIR, help="Where to write the packages' stubs (default gamjeong/api)."
    )
    parser.add_argument(
        "--any-tools", action="store_true", help=f"Allow a grpcio-tools other than {PINNED_TOOLS} (not for commits)."
    )
    args = parser.parse_args(argv)
    found = tools_version()
    if found != PINNED_TOOLS and not args.any_tools:
        print(
            f"error: the committed stubs come from grpcio-tools {PINNED_TOOLS} (protobuf {GENCODE} gencode, the "
            f"oldest runtime gamjeong supports), not {found}; run `make protos`, which installs it aside.",
            file=sys.stderr,
        )
        return 2
    written: list[Path] = []
    try:
        for package in PACKAGES:
            output = args.output / package.stubs_dir.name
            if output.resolve() == package.stubs_dir:
                # Drop stubs of protos that no longer exist; __init__.py stays.
                for old in package.stubs_dir.iterdir():
                    if old.name.endswith(GENERATED_SUFFIXES):
                        old.unlink()
            written += generate(output, package=package)
            shutil.rmtree(output / "__pycache__", ignore_errors=True)
    except GamjeongError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
