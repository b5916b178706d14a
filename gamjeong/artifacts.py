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
