"""Generate the Python gRPC stubs in gamjeong/api/v1 from protos/ (`make protos` runs `python -m gamjeong.api.codegen`).

grpc_tools.protoc with `-I protos` writes `from gamjeong.v1 import emotion_pb2` style imports (the proto package is
`gamjeong.v1`); the stubs live in the Python package `gamjeong.api.v1` (shared by the server and the clients), so those
imports are rewritten here. The generated files are committed; tests/test_client_codegen.py regenerates them into a
temporary directory and fails when the committed ones are stale.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from gamjeong.errors import GamjeongError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_PACKAGE_DIR = Path("gamjeong") / "v1"  # proto package gamjeong.v1, relative to PROTO_ROOT
STUBS_DIR = Path(__file__).resolve().parent / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")

# `from gamjeong.v1 import x_pb2` / `import gamjeong.v1.x_pb2` -> the gamjeong.api.v1 package.
_IMPORT_PATTERNS = (
    (re.compile(r"^from gamjeong\.v1 import ", re.MULTILINE), "from gamjeong.api.v1 import "),
    (re.compile(r"^import gamjeong\.v1\.", re.MULTILINE), "import gamjeong.api.v1."),
)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    files = sorted((proto_root / PROTO_PACKAGE_DIR).glob("*.proto"))
    if not files:
        raise GamjeongError(f"No .proto files under '{proto_root / PROTO_PACKAGE_DIR}'.")
    return files


def rewrite_imports(source: str) -> str:
    for pattern, replacement in _IMPORT_PATTERNS:
        source = pattern.sub(replacement, source)
    return source


def generate(output_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every proto of package gamjeong.v1 and write the rewritten stubs flat into output_dir."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # grpcio-tools is a dev dependency
        raise GamjeongError("Generating stubs needs grpcio-tools; install it with `pip install -e '.[dev]'`.") from exc

    well_known_protos = Path(grpc_tools.__file__).parent / "_proto"
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        relative = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
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
        for generated in sorted((raw_dir / PROTO_PACKAGE_DIR).iterdir()):
            if not generated.name.endswith(GENERATED_SUFFIXES):
                continue
            target = output_dir / generated.name
            target.write_text(rewrite_imports(generated.read_text(encoding="utf-8")), encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=STUBS_DIR, help="Where to write the stubs (default gamjeong/api/v1)."
    )
    args = parser.parse_args(argv)
    try:
        if args.output.resolve() == STUBS_DIR:
            # Drop stubs of protos that no longer exist; __init__.py stays.
            for old in STUBS_DIR.iterdir():
                if old.name.endswith(GENERATED_SUFFIXES):
                    old.unlink()
        written = generate(args.output)
    except GamjeongError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    shutil.rmtree(args.output / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
