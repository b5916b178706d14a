"""The artifact directory contract: what each pipeline stage writes and the next one reads.

training  -> a *trained model directory*: config.json (seven labels), model.safetensors, tokenizer files,
             metrics.json, classification_report.txt, confusion_matrix.png, training_curves.png, README.md,
             splits/{train,validation,test}.csv (the data actually used, so export can check parity on it).
export    -> an *exported directory*: model.onnx (the model to serve), tokenizer files, config.json,
             manifest.json (sha256 of every file, settings, versions, parity), parity.json.
server    -> loads an exported directory (or a trained one with --backend pytorch).

manifest.json is the typed `Manifest` below: export writes it, and every reader (the predictor, the server,
benchmarks, quickstart) goes through `read_manifest` / `verify_manifest`, the one place it is parsed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer, model_validator

from gamjeong.errors import GamjeongError

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


# --- manifest.json: written by export, read by everyone else through `read_manifest` -----------------------------
class _Section(BaseModel):
    """A part of the manifest: the fields readers use are typed; anything else an export recorded is kept as it is,
    and written back in the order it was read (so a manifest read and written again is the same text)."""

    model_config = ConfigDict(extra="allow")
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: Any) -> Any:
        section = handler(data)
        if isinstance(data, dict):
            section._order = list(data)
        return section

    @model_serializer(mode="wrap")
    def _in_order(self, handler: Any) -> dict[str, Any]:
        document = handler(self)
        if not self._order:
            return document
        ordered = {key: document[key] for key in self._order if key in document}
        return ordered | {key: value for key, value in document.items() if key not in ordered}


class FileRecord(_Section):
    sha256: str
    size: int


class ManifestSource(_Section):
    """The trained directory the export was made from."""

    model_dir: str | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None
    weights_size: int | None = None
    metrics: dict[str, float] | None = None  # accuracy and macro-F1 of its metrics.json, when it had one


class ManifestQuantization(_Section):
    mode: str = "none"  # "int8", "fp16" or "none" (fp32); the int8 search adds its candidate's settings


class ManifestTarget(_Section):
    name: str | None = None  # avx512_vnni, avx2, arm64, cuda
    requested: str | None = None
    reason: str | None = None


class ManifestParity(_Section):
    """The export gate's figures (export/gate.py adds many more, kept as extra fields)."""

    source: str | None = None
    texts: int | None = None
    argmax_agreement: float | None = None
    confident_agreement: float | None = None
    max_abs_prob_diff: float | None = None
    passed: bool | None = None


class Manifest(_Section):
    """manifest.json of an exported directory, in the order `gamjeong export` writes it.

    Every field but `files` has a default, so manifests of older exports still load; fields this model does not name
    are kept, and `as_json()` gives back exactly what was read (or written). `manifest["key"]` reads that JSON too.
    """

    format_version: int = 1
    created_at: str | None = None
    model_file: str = ONNX_MODEL_FILE
    labels: list[str] = Field(default_factory=list)
    source: ManifestSource = Field(default_factory=ManifestSource)
    task: str = "text-classification"
    # the graph (export/describe.py's graph_description)
    opset: int | None = None
    inputs: dict[str, list[str | int]] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    ir_version: int | None = None
    nodes: int | None = None
    int8_nodes: dict[str, int] = Field(default_factory=dict)
    quantization: ManifestQuantization = Field(default_factory=ManifestQuantization)
    optimization: dict[str, Any] = Field(default_factory=dict)
    target: ManifestTarget = Field(default_factory=ManifestTarget)
    max_length: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    parity: ManifestParity = Field(default_factory=ManifestParity)
    forced: bool = False  # published with --force although the gate failed
    files: dict[str, FileRecord] = Field(default_factory=dict)  # every file but the manifest: {"sha256", "size"}
    _directory: Path | None = PrivateAttr(None)

    @property
    def directory(self) -> Path | None:
        """The exported directory it was read from (resolved); None for one built in memory."""
        return self._directory

    @property
    def version(self) -> str:
        """The export's identity: the first 16 hex digits of the sha256 of this manifest as canonical JSON. The
        manifest lists every file's sha256, so two exports that differ in any file differ here; what the server
        reports as the model version (and what a reload compares)."""
        canonical = json.dumps(self.as_json(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def precision(self) -> str:
        """What the export says it is: "fp32", "int8" or "fp16". (What is served is read from the graph itself,
        gamjeong.onnx_runtime.graph_precision: the manifest's checksums cover every file but the manifest.)"""
        return "fp32" if self.quantization.mode == "none" else self.quantization.mode

    def as_json(self) -> dict[str, Any]:
        """The manifest.json document: the fields that were given, in order, then the extra ones."""
        return self.model_dump(mode="json", exclude_unset=True)

    def __getitem__(self, key: str) -> Any:
        return self.as_json()[key]

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.as_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def read_manifest(directory: str | Path, *, require_files: bool = True) -> Manifest:
    """The manifest.json of an exported directory, typed: the one place it is parsed. One sentence when it is
    missing, unreadable, not a manifest or (unless `require_files=False`) lists no files."""
    manifest_file = Path(directory) / MANIFEST_FILE
    if not manifest_file.is_file():
        raise GamjeongError(
            f"'{directory}' has no {MANIFEST_FILE}, so its files cannot be checked; export it with `gamjeong export`."
        )
    try:
        document = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GamjeongError(f"'{manifest_file}' is not valid JSON; export the model again.") from exc
    if not isinstance(document, dict) or (require_files and not isinstance(document.get("files"), dict)):
        raise GamjeongError(f"'{manifest_file}' lists no files; export the model again.")
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise GamjeongError(
            f"'{manifest_file}' is not a gamjeong manifest ({where}: {error['msg']}); export the model again."
        ) from None
    manifest._directory = Path(directory).expanduser().resolve()
    return manifest


def find_manifest(directory: str | Path) -> Manifest | None:
    """What a directory's manifest.json says, for describing a model (not for trusting its files): None when it has
    none or it cannot be read."""
    if not (Path(directory) / MANIFEST_FILE).is_file():
        return None
    try:
        return read_manifest(directory, require_files=False)
    except GamjeongError:
        return None


def verify_manifest(directory: str | Path) -> Manifest:
    """Check every file listed in an exported directory's manifest (size, then sha256); return the manifest.

    The server and `load_predictor` call this before loading, so a truncated copy or an edited file is refused with
    one sentence instead of serving a model nobody exported.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    if ONNX_MODEL_FILE not in manifest.files:
        raise GamjeongError(f"'{root / MANIFEST_FILE}' does not list {ONNX_MODEL_FILE}; export the model again.")
    problems: list[str] = []
    for name, expected in manifest.files.items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected.size:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected.size}")
        elif file_sha256(path) != expected.sha256:
            problems.append(f"{name} has a different sha256 than the manifest")
    if problems:
        raise GamjeongError(
            f"'{root}' does not match its {MANIFEST_FILE} ({'; '.join(problems)}); "
            "copy the exported directory again or re-run `gamjeong export`."
        )
    return manifest


def read_metrics(directory: str | Path) -> dict[str, Any]:
    """A directory's metrics.json ({} when it has none or it cannot be read)."""
    try:
        document = json.loads((Path(directory) / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def evaluated_dirs(model_dir: str | Path, manifest: Manifest | None = None) -> list[Path]:
    """Where a model's own evaluation (metrics.json) may be: its directory, then, for an export, the trained
    directory its manifest names."""
    dirs = [Path(model_dir)]
    if manifest is not None and manifest.source.model_dir:
        dirs.append(Path(manifest.source.model_dir))
    return dirs


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
    root = Path(directory)
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise GamjeongError(
            f"'{root}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of the "
            "trained model into it or re-run `gamjeong export`."
        )
