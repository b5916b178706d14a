"""Metrics, the classification report and the pictures: one implementation for training and `gamjeong evaluate`.

Both run the model through `gamjeong.predictor` (PyTorch for a trained directory, ONNX Runtime for an exported one),
so the numbers in a trained directory's metrics.json are exactly what `gamjeong evaluate` reproduces.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gamjeong.artifacts import METRICS_FILE, SPLITS_DIR, TEST_SPLIT, VALIDATION_SPLIT
from gamjeong.errors import GamjeongError
from gamjeong.labels import EMOTIONS, LABEL_NAMES, NUM_LABELS

log = logging.getLogger(__name__)

CLASSIFICATION_REPORT_FILE = "classification_report.txt"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TRAINING_CURVES_FILE = "training_curves.png"


def compute_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the 7x7 confusion matrix (id order)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape != (len(y_true), NUM_LABELS):
        raise ValueError(f"probs must have shape ({len(y_true)}, {NUM_LABELS}), got {probs.shape}")
    if len(y_true) == 0:
        raise GamjeongError("There are no labelled texts to evaluate on.")
    y_pred = probs.argmax(axis=1)
    labels = list(range(NUM_LABELS))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    # Macro averages over the classes that occur in the truth or the predictions, as sklearn's f1_score does.
    present = (support > 0) | np.isin(labels, y_pred)
    weights = support / support.sum()
    # Log loss of the true class: a calibration signal that accuracy and F1 do not show.
    true_class_probs = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    return {
        "num_examples": len(y_true),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1[present].mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "weighted_f1": float((f1 * weights).sum()),
        "log_loss": float(-np.log(true_class_probs).mean()),
        "labels": list(LABEL_NAMES),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(LABEL_NAMES)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def format_classification_report(metrics: dict, title: str | None = None) -> str:
    """A plain-text table (like sklearn's classification_report) built from the metrics dict itself."""
    width = max(len(f"{e.name} {e.name_ko}") for e in EMOTIONS) + 4
    lines = [title, ""] if title else []
    lines.append(f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}")
    lines.append("")
    for emotion in EMOTIONS:
        row = metrics["per_class"][emotion.name]
        # Hangul is two columns wide in a terminal; pad by display width so the numbers line up.
        label = f"{emotion.name} {emotion.name_ko}"
        pad = width - len(label) - len(emotion.name_ko)
        lines.append(
            f"{label}{' ' * pad}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10d}"
        )
    total = metrics["num_examples"]
    lines += [
        "",
        f"{'accuracy':<{width}}{'':>10}{'':>10}{metrics['accuracy']:>10.4f}{total:>10d}",
        f"{'macro avg':<{width}}{metrics['macro_precision']:>10.4f}{metrics['macro_recall']:>10.4f}"
        f"{metrics['macro_f1']:>10.4f}{total:>10d}",
        f"{'weighted avg':<{width}}{'':>10}{'':>10}{metrics['weighted_f1']:>10.4f}{total:>10d}",
        "",
    ]
    return "\n".join(lines)


def _figure(width: float, height: float):
    # koreanize_matplotlib registers a bundled NanumGothic font, so Hangul labels render as Hangul, not boxes.
    import koreanize_matplotlib  # noqa: F401
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: Path, title: str = "Confusion matrix") -> Path:
    """Counts with each row's share as the colour, classes labelled 'joy 기쁨' etc."""
    counts = np.asarray(matrix, dtype=np.int64)
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = _figure(7.5, 6.5)
    axes = figure.subplots()
    image = axes.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = [f"{e.name} {e.name_ko}" for e in EMOTIONS]
    axes.set_xticks(range(NUM_LABELS), ticks, rotation=45, ha="right")
    axes.set_yticks(range(NUM_LABELS), ticks)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for i in range(NUM_LABELS):
        for j in range(NUM_LABELS):
            color = "white" if row_share[i, j] > 0.5 else "black"
            axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_training_curves(log_history: Sequence[dict], path: Path) -> Path:
    """Train loss, validation loss and validation macro-F1 against the optimizer step (Trainer's log_history)."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [e for e in log_history if "eval_loss" in e and "step" in e]
    figure = _figure(10, 4)
    loss_axes, f1_axes = figure.subplots(1, 2)
    if train:
        loss_axes.plot(*zip(*train, strict=True), label="train loss", alpha=0.8)
    if evals:
        loss_axes.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss")
        f1_axes.plot(
            [e["step"] for e in evals], [e.get("eval_macro_f1", np.nan) for e in evals], "o-", label="macro-F1"
        )
        f1_axes.plot(
            [e["step"] for e in evals], [e.get("eval_accuracy", np.nan) for e in evals], "s--", label="accuracy"
        )
    else:
        f1_axes.text(0.5, 0.5, "no validation run was logged", ha="center", va="center", transform=f1_axes.transAxes)
    loss_axes.set(xlabel="step", ylabel="loss", title="Loss")
    f1_axes.set(xlabel="step", ylabel="score", title="Validation", ylim=(0, 1))
    for axes in (loss_axes, f1_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _json_with_flat_number_lists(document: dict) -> str:
    """Indented JSON, but each list of numbers (a confusion-matrix row, class weights) on one line."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    flatten = lambda match: "[" + ", ".join(part.strip() for part in match.group(1).split(",")) + "]"  # noqa: E731
    return re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]", flatten, text) + "\n"


def write_evaluation_report(
    output_dir: str | Path, metrics: dict, *, extra: dict | None = None, title: str | None = None
) -> dict[str, Path]:
    """metrics.json (metrics plus `extra`), classification_report.txt and confusion_matrix.png in `output_dir`."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": output / METRICS_FILE,
        "classification_report": output / CLASSIFICATION_REPORT_FILE,
        "confusion_matrix": output / CONFUSION_MATRIX_FILE,
    }
    document = {**metrics, **(extra or {})}
    files["metrics"].write_text(_json_with_flat_number_lists(document), encoding="utf-8")
    files["classification_report"].write_text(format_classification_report(metrics, title), encoding="utf-8")
    plot_confusion_matrix(metrics["confusion_matrix"], files["confusion_matrix"], title or "Confusion matrix")
    return files


def evaluate_predictor(predictor, texts: Sequence[str], labels: Sequence[int], batch_size: int = 32) -> dict:
    """Run any Predictor (PyTorch or ONNX) over labelled texts and compute the metrics."""
    probs = predictor.predict_proba(list(texts), batch_size=batch_size)
    metrics = compute_metrics(labels, probs)
    metrics["backend"] = predictor.backend
    metrics["max_length"] = predictor.max_length
    return metrics


# --- `gamjeong evaluate` -----------------------------------------------------------------------------------------
class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Path
    data: Path | None = None  # default: the model directory's splits/test.csv (else validation.csv)
    output: Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    encoding: str | None = None
    batch_size: int = Field(32, ge=1)
    backend: Literal["auto", "pytorch", "onnx"] = "auto"
    device: str = "auto"


def _default_eval_data(model_dir: Path) -> Path:
    for name in (TEST_SPLIT, VALIDATION_SPLIT):
        candidate = model_dir / SPLITS_DIR / name
        if candidate.is_file():
            return candidate
    raise GamjeongError(f"'{model_dir}' has no {SPLITS_DIR}/{TEST_SPLIT}; pass the labelled data with --data.")


def evaluate(config: EvaluateConfig) -> dict:
    """Metrics of a trained or exported model directory on labelled data; the report is written when output is set.

    The data is read and cleaned exactly as training reads a test file, so evaluating a trained directory on its
    own test data reproduces its metrics.json.
    """
    from gamjeong.predictor import load_predictor
    from gamjeong.training.data import load_labelled_data

    model_dir = Path(config.model).expanduser()
    data_path = Path(config.data).expanduser() if config.data else _default_eval_data(model_dir)
    frame, report = load_labelled_data(
        data_path, text_column=config.text_column, label_column=config.label_column, encoding=config.encoding
    )
    predictor = load_predictor(model_dir, backend=config.backend, device=config.device)
    metrics = evaluate_predictor(predictor, frame["text"].tolist(), frame["label"].tolist(), config.batch_size)
    metrics["model"] = str(model_dir)
    metrics["data"] = str(data_path)
    metrics["data_cleaning"] = {
        "rows_read": report.rows_read,
        "rows_dropped": report.dropped_total,
        "summary": report.summary(),
    }
    if config.output is not None:
        write_evaluation_report(config.output, metrics, title=f"{model_dir.name} on {data_path.name}")
    return metrics
