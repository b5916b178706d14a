"""The model card (README.md) of a trained model directory, and the library versions it and metrics.json record."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gamjeong.artifacts import SPLITS_DIR
from gamjeong.labels import EMOTIONS

if TYPE_CHECKING:
    from gamjeong.training.config import TrainConfig
    from gamjeong.training.data import DatasetSplits


def training_library_versions() -> dict[str, str]:
    """metrics.json's `training.library_versions`, listed again in the model card."""
    from gamjeong.versions import library_versions

    packages = ("gamjeong", "torch", "transformers", "tokenizers", "accelerate", "scikit-learn", "numpy", "pandas")
    return library_versions(packages)  # type: ignore[return-value]


def model_card(
    config: TrainConfig, splits: DatasetSplits, metrics: dict, training: dict, cross_validation: dict | None
) -> str:
    """README.md of a trained model directory: data, cleaning, hyper-parameters, training, metrics, versions, files."""
    counts = splits.class_counts()
    names = list(counts)
    lines = [
        "# gamjeong emotion classifier",
        "",
        f"Korean emotion classification into seven classes, fine-tuned from `{config.base_model}` with `gamjeong train`.",
        "",
        "## Data",
        "",
        f"Source: `{config.data}`. Splits: {splits.split_note}.",
        "",
        "| class | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for emotion in EMOTIONS:
        lines.append(
            f"| {emotion.id} {emotion.name} {emotion.name_ko} | "
            + " | ".join(str(counts[n][emotion.name]) for n in names)
            + " |"
        )
    lines.append("| total | " + " | ".join(str(sum(counts[n].values())) for n in names) + " |")
    lines += ["", "Cleaning (rows dropped per file):", ""]
    lines += [f"- {split}: {report.summary()}" for split, report in splits.files.items()]
    lines += [f"- {what}: {count}" for what, count in splits.overlap.items()]
    hyper = config.model_dump(mode="json", exclude={"progress", "overwrite", "keep_checkpoints"})
    lines += ["", "## Hyper-parameters", "", "```json", json.dumps(hyper, indent=2, ensure_ascii=False), "```", ""]
    lines += [
        "## Training",
        "",
        f"- steps: {training['global_step']} ({training['epochs_completed']:.2f} epochs), "
        f"best checkpoint: {training['best_checkpoint']} (validation macro-F1 {training['best_validation_macro_f1']})",
        f"- stopped early: {training['stopped_early']}; wall time {training['train_runtime_s']:.0f} s on {training['device']}",
        "",
        f"## Metrics ({metrics['split']} split, {metrics['num_examples']} texts)",
        "",
        f"Accuracy **{metrics['accuracy']:.4f}**, macro-F1 **{metrics['macro_f1']:.4f}**, weighted F1 {metrics['weighted_f1']:.4f}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for emotion in EMOTIONS:
        row = metrics["per_class"][emotion.name]
        lines.append(
            f"| {emotion.name} {emotion.name_ko} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
        )
    if cross_validation:
        lines += [
            "",
            f"Cross-validation ({cross_validation['folds']} folds): accuracy {cross_validation['accuracy']['mean']:.4f} "
            f"± {cross_validation['accuracy']['std']:.4f}, macro-F1 {cross_validation['macro_f1']['mean']:.4f} "
            f"± {cross_validation['macro_f1']['std']:.4f}.",
        ]
    lines += ["", "## Library versions", ""]
    lines += [f"- {name} {version}" for name, version in training["library_versions"].items()]
    lines += [
        "",
        "## Files",
        "",
        "config.json, model.safetensors and the tokenizer files (model_max_length = --max-length) load with "
        "`transformers`; metrics.json, classification_report.txt, confusion_matrix.png, training_curves.png; "
        f"{SPLITS_DIR}/ holds the exact train/validation/test rows used.",
        "",
    ]
    return "\n".join(lines)
