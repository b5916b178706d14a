"""The settings of a training run (`gamjeong train`): one typed object, and the one place their defaults are written
(the CLI's flags show these)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gamjeong.modeling import DEFAULT_BASE_MODEL


class TrainConfig(BaseModel):
    """Everything `gamjeong train` needs; the CLI flags map one to one onto these fields."""

    model_config = ConfigDict(extra="forbid")

    data: Path  # a file, or a folder with train / dev (validation) / test files
    output: Path
    eval_data: Path | None = None
    test_data: Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    encoding: str | None = None
    base_model: str = DEFAULT_BASE_MODEL
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs
    # Train for this many minutes instead: the step count is planned from the measured step time (training/budget.py);
    # epochs / max_steps then only bound it from above.
    time_budget_minutes: float | None = Field(None, gt=0)
    batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(128, ge=8, le=8192)
    seed: int = 42
    class_weights: Literal["auto", "none"] = "auto"
    early_stopping_patience: int = Field(3, ge=0)  # evaluations without improvement; 0 turns early stopping off
    folds: int | None = Field(None, ge=2)  # K-fold cross-validation on train+validation before the final run
    # Multilingual vocabularies make the word embeddings most of the model (96M of e5-small's 118M parameters):
    # freezing them halves a CPU step (no AdamW update of that matrix) and keeps rare-token vectors pretrained.
    freeze_embeddings: bool = False
    eval_steps: int | None = Field(None, ge=1)  # default: once per epoch (or once at the end of a shorter run)
    logging_steps: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16) on a GPU, fp32 on a CPU
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "last" for the newest one in --output
    keep_checkpoints: bool = False
    overwrite: bool = False
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    progress: bool = True
