"""The artifact directory contract: what each pipeline stage writes and the next one reads.

training  -> a *trained model directory*: config.json (seven labels), model.safetensors, tokenizer files,
             metrics.json, classification_report.txt, confusion_matrix.png, training_curves.png, README.md,
             splits/{train,validation,test}.csv (the data actually used, so export can check parity on it).
export    -> an *exported directory*: model.onnx (the model to serve), tokenizer files, config.json,
             manifest.json (sha256 of every file, settings, versions, parity), parity.json.
server    -> loads an exported directory (or a trained one with --backend pytorch).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPLITS_DIR = "splits"
VALIDATION_SPLIT = "validation.csv"
TEST_SPLIT = "test.csv"
ONNX_MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"


def is_exported_dir(path: str | Path) -> bool:
    """True for a directory written by `gamjeong export` (it holds the ONNX model to serve)."""
    return (Path(path) / ONNX_MODEL_FILE).is_file()


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (about 1-2 s for a 500 MB model)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(
    directory: str | Path, *, exclude: tuple[str, ...] = (MANIFEST_FILE,)
) -> dict[str, dict[str, object]]:
    """{relative path: {"sha256", "size"}} of every file under a directory (the manifest's `files` section)."""
    root = Path(directory)
    return {
        path.relative_to(root).as_posix(): {"sha256": file_sha256(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() not in exclude
    }


def read_manifest(directory: str | Path) -> dict:
    """The parsed manifest.json of an exported directory; one sentence when it is missing or unreadable."""
    import json

    from gamjeong.errors import GamjeongError

    manifest_file = Path(directory) / MANIFEST_FILE
    if not manifest_file.is_file():
        raise GamjeongError(
            f"'{directory}' has no {MANIFEST_FILE}, so its files cannot be checked; export it with `gamjeong export`."
        )
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GamjeongError(f"'{manifest_file}' is not valid JSON; export the model again.") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise GamjeongError(f"'{manifest_file}' lists no files; export the model again.")
    return manifest


def verify_manifest(directory: str | Path) -> dict:
    """Check every file listed in an exported directory's manifest (size, then sha256); return the manifest.

    The server and `load_predictor` call this before loading, so a truncated copy or an edited file is refused with
    one sentence instead of serving a model nobody exported.
    """
    from gamjeong.errors import GamjeongError

    root = Path(directory)
    manifest = read_manifest(root)
    files: dict = manifest["files"]
    if ONNX_MODEL_FILE not in files:
        raise GamjeongError(f"'{root / MANIFEST_FILE}' does not list {ONNX_MODEL_FILE}; export the model again.")
    problems: list[str] = []
    for name, expected in files.items():
        path = root / name
        if not isinstance(expected, dict):
            problems.append(f"the entry for {name} is not a {{sha256, size}} record")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected.get("size"):
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('size')}")
        elif file_sha256(path) != expected.get("sha256"):
            problems.append(f"{name} has a different sha256 than the manifest")
    if problems:
        raise GamjeongError(
            f"'{root}' does not match its {MANIFEST_FILE} ({'; '.join(problems)}); "
            "copy the exported directory again or re-run `gamjeong export`."
        )
    return manifest


# A fast tokenizer is read from tokenizer.json, or converted from one of the slow tokenizers' vocabulary files.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.json",
)


def require_tokenizer(directory: str | Path) -> None:
    """One sentence when a model directory holds no tokenizer; checked before a model is loaded, because a missing
    tokenizer otherwise surfaces after the model load as an AttributeError deep inside transformers."""
    from gamjeong.errors import GamjeongError

    root = Path(directory)
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise GamjeongError(
            f"'{root}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of the "
            "trained model into it or re-run `gamjeong export`."
        )
