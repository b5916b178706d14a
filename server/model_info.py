"""The GetModelInfo answer: what the predictor and the artifacts say about the served model.

Anyone who may call the server reads it, so it carries names only: a base model recorded as a path of the training
machine ("/home/alice/models/klue-bert") is reported by its last component ("klue-bert"). The quantisation is the
predictor's, which reads it from the ONNX graph itself (gamjeong.onnx_runtime.graph_precision), not from the
manifest's description: the manifest's checksums cover every file but the manifest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.artifacts import CONFIG_FILE, Manifest, evaluated_dirs, find_manifest, read_metrics
from gamjeong.labels import EMOTIONS
from gamjeong.predictor import Predictor
from gamjeong.server.settings import ServerSettings
from gamjeong.versions import gamjeong_version

# A Hugging Face Hub id: "name" or "org/name", letters, digits and -_. only.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def public_name(value: str) -> str:
    """A hub id unchanged; anything else (a local path, POSIX or Windows) reduced to its last component."""
    value = value.strip()
    if _HUB_ID.match(value) and not value.startswith("."):
        return value
    name = PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return name if _HUB_ID.match(name) and name not in (".", "..") else ""


def _base_model(model_dir: Path, manifest: Manifest | None) -> str:
    """The pretrained model the served one was fine-tuned from, as recorded by `gamjeong train` (metrics.json), also
    for an exported directory (via the trained directory its manifest names); "" when nothing says."""
    recorded = manifest.as_json() if manifest is not None else {}
    for directory in evaluated_dirs(model_dir, manifest):
        metrics = read_metrics(directory)
        training = metrics.get("training")
        for record in (training if isinstance(training, dict) else {}, metrics, recorded):
            value = record.get("base_model")
            if isinstance(value, str) and public_name(value):
                return public_name(value)
    try:
        name_or_path = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        name_or_path = None
    if isinstance(name_or_path, str) and name_or_path and not Path(name_or_path).is_absolute():
        return public_name(name_or_path)
    return ""


def served_manifest(model_dir: Path, predictor: Predictor) -> Manifest | None:
    """The manifest of the described directory: the one the predictor verified when it loaded that directory, else
    whatever the directory's manifest.json says (None for a trained directory)."""
    kept = predictor.manifest
    if kept is not None and kept.directory == Path(model_dir).expanduser().resolve():
        return kept
    return find_manifest(model_dir)


def describe_model(model_dir: Path, predictor: Predictor, settings: ServerSettings) -> pb.ModelInfo:
    """The GetModelInfo answer, from the predictor and whatever the artifacts say about the model."""
    manifest = served_manifest(model_dir, predictor)
    recorded_name = manifest.as_json().get("model_name") if manifest is not None else None
    model_name = public_name(recorded_name) if isinstance(recorded_name, str) else ""
    provider = getattr(predictor, "provider", None) or f"pytorch-{predictor.device}"
    return pb.ModelInfo(
        model_name=model_name or model_dir.resolve().name,
        base_model=_base_model(model_dir, manifest),
        labels=[pb.Label(id=e.id, name=e.name, name_ko=e.name_ko) for e in EMOTIONS],
        quantization="none" if predictor.precision == "fp32" else predictor.precision,
        backend=predictor.backend,
        execution_provider=provider,
        max_input_length=predictor.max_length,
        limits=pb.Limits(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_texts_per_request=settings.max_texts_per_request,
            max_stream_texts=settings.max_stream_texts,
            max_queue_size=settings.max_queue_size,
            max_text_chars=settings.max_text_chars,
            default_truncation=pb.TRUNCATION_REFUSE if settings.truncation == "refuse" else pb.TRUNCATION_TRUNCATE,
            max_message_bytes=settings.max_message_bytes,
        ),
        version=gamjeong_version(),
        model_version=manifest.version if manifest is not None else "",
        exported_at=(manifest.created_at or "") if manifest is not None else "",
    )
