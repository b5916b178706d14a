"""Fine-tuning any Hugging Face encoder on the seven emotions with the Hugging Face Trainer.

The Trainer gives mixed precision on GPU, gradient accumulation, checkpoints and resume, and multi-GPU runs under
torchrun/accelerate. We add class-weighted cross-entropy, early stopping on validation macro-F1, K-fold
cross-validation and the trained model directory (see gamjeong/artifacts.py) that export and the server read.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamjeong.artifacts import CONFIG_FILE, METRICS_FILE, SPLITS_DIR, TEST_SPLIT, VALIDATION_SPLIT
from gamjeong.errors import GamjeongError
from gamjeong.labels import EMOTIONS, NUM_LABELS
from gamjeong.training.config import TrainConfig
from gamjeong.training.model_card import model_card, training_library_versions

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "class_weights_for", "train"]

CHECKPOINTS_DIR = "checkpoints"  # Trainer's working folder inside --output; removed after a successful run
TRAIN_SPLIT = "train.csv"
MODEL_CARD_FILE = "README.md"


@dataclass
class FitResult:
    trainer: object  # transformers.Trainer, holding the best model
    best_metric: float | None
    best_checkpoint: str | None
    stopped_early: bool
    runtime_s: float
    time_budget: dict | None = None  # BudgetPlan.as_dict() of a --time-budget run


# --- pieces ------------------------------------------------------------------------------------------------------
def class_weights_for(labels: np.ndarray) -> np.ndarray:
    """'Balanced' weights n / (classes x count): each class contributes equally to the loss; absent classes get 1."""
    counts = np.bincount(labels, minlength=NUM_LABELS).astype(np.float64)
    present = counts > 0
    weights = np.ones(NUM_LABELS)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _encoded_dataset(tokenizer, texts: list[str], labels: list[int], max_length: int):
    import torch

    # No token_type_ids: the predictor feeds input_ids and attention_mask only, so training must match it.
    encodings = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)

    class EncodedTexts(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, index: int) -> dict:
            return {
                "input_ids": encodings["input_ids"][index],
                "attention_mask": encodings["attention_mask"][index],
                "labels": labels[index],
            }

    return EncodedTexts()


def _make_trainer_class():
    import torch
    from transformers import Trainer

    class WeightedLossTrainer(Trainer):
        """Trainer with (optionally class-weighted) cross-entropy computed here, in float32."""

        def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.class_weights = class_weights
            # Our loss is a mean over the batch, so the Trainer must divide it by the accumulation steps itself.
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            weight = None if self.class_weights is None else self.class_weights.to(outputs.logits.device)
            loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedLossTrainer


def _trainer_metrics(eval_prediction) -> dict[str, float]:
    from gamjeong.predictor import softmax
    from gamjeong.training.evaluation import compute_metrics

    logits = (
        eval_prediction.predictions[0]
        if isinstance(eval_prediction.predictions, tuple)
        else eval_prediction.predictions
    )
    metrics = compute_metrics(eval_prediction.label_ids, softmax(np.asarray(logits, dtype=np.float32)))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def _mixed_precision(choice: str) -> dict[str, bool]:
    import torch

    if choice == "auto":
        if not torch.cuda.is_available():
            return {}
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "fp16" and not torch.cuda.is_available():
        raise GamjeongError("fp16 training needs a CUDA GPU; use --precision bf16 or fp32 on a CPU.")
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


# RoBERTa-style position ids start after the padding index, so two of their positions are not usable.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "xlm-roberta-xl": 2}


def _check_max_length(model, config: TrainConfig) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None:
        positions -= _POSITION_OFFSET.get(getattr(model.config, "model_type", ""), 0)
    if positions is not None and config.max_length > positions:
        raise GamjeongError(
            f"--max-length {config.max_length} is longer than '{config.base_model}' supports ({positions} positions); "
            f"use --max-length {positions} or less."
        )


def _fit(
    config: TrainConfig,
    tokenizer,
    train_texts: list[str],
    train_labels: list[int],
    validation_texts: list[str],
    validation_labels: list[int],
    work_dir: Path,
    *,
    resume_from_checkpoint: str | None = None,
) -> FitResult:
    """One Trainer run: train, evaluate every eval_steps, keep the checkpoint with the best validation macro-F1."""
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments, set_seed

    from gamjeong.modeling import load_base_model_for_training

    set_seed(config.seed)  # before the model is built, so the new classification head is reproducible too
    model = load_base_model_for_training(config.base_model)
    _check_max_length(model, config)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    train_dataset = _encoded_dataset(tokenizer, train_texts, train_labels, config.max_length)
    validation_dataset = _encoded_dataset(tokenizer, validation_texts, validation_labels, config.max_length)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(
        1, math.ceil(len(train_texts) / (config.batch_size * config.gradient_accumulation_steps * world_size))
    )
    total_steps = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    eval_steps = config.eval_steps or min(steps_per_epoch, total_steps)
    if config.time_budget_minutes is not None:
        eval_steps = total_steps + 1  # the budget callback chooses when to evaluate (and checkpoint)
    logging_steps = config.logging_steps or max(1, min(50, eval_steps // 4))

    weights = None
    if config.class_weights == "auto":
        weights = torch.tensor(class_weights_for(np.asarray(train_labels)), dtype=torch.float32)
        log.info("class weights: %s", dict(zip([e.name for e in EMOTIONS], weights.tolist(), strict=True)))

    arguments = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size * 2,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,  # the best checkpoint is always kept on top of the newest
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_steps=logging_steps,
        group_by_length=True,  # batches of similar length: much less padding with dynamic padding
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **_mixed_precision(config.precision),
    )
    callbacks: list = []
    if config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    budget = None
    if config.time_budget_minutes is not None:
        from gamjeong.training.budget import TimeBudgetCallback

        # An evaluation batch (twice the size, forward only) costs about 2/3 of a training step.
        eval_batches = math.ceil(len(validation_texts) / (config.batch_size * 2))
        budget = TimeBudgetCallback(config.time_budget_minutes * 60, eval_fraction_cost=eval_batches * 2 / 3)
        callbacks.append(budget)
    trainer = _make_trainer_class()(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_trainer_metrics,
        callbacks=callbacks,
        class_weights=weights,
    )
    if not config.progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # without a progress bar the Trainer prints every log dict instead
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    runtime = time.perf_counter() - started
    state = trainer.state
    return FitResult(
        trainer=trainer,
        best_metric=state.best_metric,
        best_checkpoint=Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        stopped_early=state.global_step < state.max_steps and (budget is None or budget.plan.stopped_by != "plan"),
        runtime_s=runtime,
        time_budget=budget.plan.as_dict() if budget is not None else None,
    )


def _resolve_resume(config: TrainConfig, work_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if config.resume_from_checkpoint is None:
        return None
    if config.resume_from_checkpoint == "last":
        last = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
        if last is None:
            raise GamjeongError(
                f"There is no checkpoint to resume from in '{work_dir}'; start without --resume-from-checkpoint."
            )
        return last
    checkpoint = Path(config.resume_from_checkpoint).expanduser()
    if not (checkpoint / "trainer_state.json").is_file():
        raise GamjeongError(f"'{checkpoint}' is not a Trainer checkpoint (it has no trainer_state.json).")
    return str(checkpoint)


def _cross_validate(config: TrainConfig, tokenizer, splits, work_dir: Path) -> dict:
    """Stratified K-fold on train+validation (the test split stays untouched); per-fold and mean/std metrics."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from gamjeong.predictor import softmax
    from gamjeong.training.evaluation import compute_metrics

    pool = pd.concat([splits.train, splits.validation], ignore_index=True)
    labels = pool["label"].to_numpy()
    if np.bincount(labels).max() < config.folds:
        raise GamjeongError(
            f"--folds {config.folds} needs at least {config.folds} rows of some class; use fewer folds."
        )
    folds = StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
    results = []
    for number, (train_index, held_out_index) in enumerate(folds.split(pool["text"], labels), start=1):
        log.info("cross-validation: fold %d of %d", number, config.folds)
        fold_dir = work_dir / f"fold-{number}"
        fit = _fit(
            config,
            tokenizer,
            pool["text"].iloc[train_index].tolist(),
            labels[train_index].tolist(),
            pool["text"].iloc[held_out_index].tolist(),
            labels[held_out_index].tolist(),
            fold_dir,
        )
        prediction = fit.trainer.predict(fit.trainer.eval_dataset)
        metrics = compute_metrics(prediction.label_ids, softmax(np.asarray(prediction.predictions, dtype=np.float32)))
        results.append(
            {
                "fold": number,
                "train_examples": len(train_index),
                "held_out_examples": len(held_out_index),
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "per_class_f1": {name: row["f1"] for name, row in metrics["per_class"].items()},
            }
        )
        shutil.rmtree(fold_dir, ignore_errors=True)
    summary = {
        key: {
            "mean": float(np.mean([r[key] for r in results])),
            "std": float(np.std([r[key] for r in results], ddof=1)),
        }
        for key in ("accuracy", "macro_f1")
    }
    return {
        "folds": config.folds,
        "pool": f"train + validation ({len(pool)} rows), stratified, seed {config.seed}; the test split is not used",
        "per_fold": results,
        **summary,
        "final_model": "the saved model is a separate run on the train split, early-stopped on the validation split; "
        "the folds estimate how much the scores vary",
    }


def _prepare_output(config: TrainConfig) -> Path:
    output = config.output.expanduser()
    if output.exists() and not output.is_dir():
        raise GamjeongError(f"--output '{output}' is a file; give a directory.")
    already_trained = (output / CONFIG_FILE).exists() or (output / METRICS_FILE).exists()
    if already_trained and not (config.overwrite or config.resume_from_checkpoint):
        raise GamjeongError(f"'{output}' already holds a trained model; pass --overwrite or choose another --output.")
    if already_trained and config.overwrite and not config.resume_from_checkpoint:
        # Split files of the old run must not survive next to the new model (a run without a test split writes none).
        for stale in (SPLITS_DIR, CHECKPOINTS_DIR):
            shutil.rmtree(output / stale, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    return output


# --- the command -------------------------------------------------------------------------------------------------
def train(config: TrainConfig) -> Path:
    """Fine-tune, evaluate and write the trained model directory; returns its path."""
    import torch

    from gamjeong.modeling import load_tokenizer
    from gamjeong.predictor import load_predictor
    from gamjeong.training.data import load_splits, write_split_csv
    from gamjeong.training.evaluation import (
        TRAINING_CURVES_FILE,
        evaluate_predictor,
        plot_training_curves,
        write_evaluation_report,
    )

    output = _prepare_output(config)
    work_dir = output / CHECKPOINTS_DIR
    resume = _resolve_resume(config, work_dir)
    splits = load_splits(
        config.data,
        eval_data=config.eval_data,
        test_data=config.test_data,
        text_column=config.text_column,
        label_column=config.label_column,
        encoding=config.encoding,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    for report in splits.files.values():
        log.info("%s", report.summary())
    log.info("splits: %s; rows per class: %s", splits.split_note, splits.class_counts())
    tokenizer = load_tokenizer(config.base_model)
    tokenizer.model_max_length = config.max_length  # saved with the model: the predictor truncates at this length

    cross_validation = _cross_validate(config, tokenizer, splits, work_dir) if config.folds else None
    fit = _fit(
        config,
        tokenizer,
        splits.train["text"].tolist(),
        splits.train["label"].tolist(),
        splits.validation["text"].tolist(),
        splits.validation["label"].tolist(),
        work_dir,
        resume_from_checkpoint=resume,
    )
    trainer = fit.trainer
    trainer.save_model(str(output))  # the best checkpoint's weights (load_best_model_at_end), config and tokenizer
    if not trainer.is_world_process_zero():
        return output  # under torchrun only the first process writes the rest
    (output / "training_args.bin").unlink(missing_ok=True)

    for name, frame in splits.named().items():
        write_split_csv(
            frame,
            output / SPLITS_DIR / {"train": TRAIN_SPLIT, "validation": VALIDATION_SPLIT, "test": TEST_SPLIT}[name],
        )

    # Final metrics go through the same predictor as `gamjeong evaluate`, so it reproduces them exactly.
    split = "test" if splits.test is not None else "validation"
    evaluated = splits.test if splits.test is not None else splits.validation
    predictor = load_predictor(output, backend="pytorch")
    metrics = evaluate_predictor(predictor, evaluated["text"].tolist(), evaluated["label"].tolist())
    metrics["split"] = split
    metrics["data"] = f"{SPLITS_DIR}/{TEST_SPLIT if split == 'test' else VALIDATION_SPLIT}"
    state = trainer.state
    training = {
        "base_model": config.base_model,
        "global_step": state.global_step,
        "epochs_completed": float(state.epoch or 0.0),
        "best_checkpoint": fit.best_checkpoint,
        "best_validation_macro_f1": fit.best_metric,
        "stopped_early": fit.stopped_early,
        "train_runtime_s": round(fit.runtime_s, 2),
        "time_budget": fit.time_budget,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "class_weights": class_weights_for(splits.train["label"].to_numpy()).round(4).tolist()
        if config.class_weights == "auto"
        else None,
        "library_versions": training_library_versions(),
    }
    extra = {
        "training": training,
        "hyperparameters": config.model_dump(mode="json", exclude={"progress"}),
        "data_report": splits.report_dict(),
    }
    if cross_validation:
        extra["cross_validation"] = cross_validation
    write_evaluation_report(output, metrics, extra=extra, title=f"{split} split ({len(evaluated)} texts)")
    plot_training_curves(state.log_history, output / TRAINING_CURVES_FILE)
    (output / MODEL_CARD_FILE).write_text(
        model_card(config, splits, metrics, training, cross_validation), encoding="utf-8"
    )
    if not config.keep_checkpoints:
        shutil.rmtree(work_dir, ignore_errors=True)
    return output
