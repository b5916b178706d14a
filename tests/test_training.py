"""Training end to end on a tiny random DistilBERT, evaluate/classify through the predictor, metrics and pictures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gamjeong.cli import app
from gamjeong.labels import ID2LABEL, LABEL_NAMES
from gamjeong.training.evaluation import compute_metrics, plot_confusion_matrix
from gamjeong.training.train import class_weights_for

TINY_RUN = ["--max-length", "32", "--batch-size", "16", "--learning-rate", "1e-3", "--seed", "7"]


def _train_args(data: Path, base_model: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--base-model", str(base_model), "--output", str(output), *extra]


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def data_slice(tmp_path_factory, shared_data_dir: Path) -> Path:
    """300 train, 100 dev and 100 test rows of the shared GoEmotions-Korean data, as a data folder."""
    folder = tmp_path_factory.mktemp("data-slice")
    train = pd.read_csv(shared_data_dir / "train.csv").iloc[:300]
    dev = pd.read_csv(shared_data_dir / "dev.csv")
    train.to_csv(folder / "train.csv", index=False)
    dev.iloc[:100].to_csv(folder / "dev.csv", index=False)
    dev.iloc[100:200].to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, data_slice: Path, tiny_model_dir: Path) -> Path:
    output = tmp_path_factory.mktemp("trained") / "model"
    _invoke(_train_args(data_slice, tiny_model_dir, output, "--max-steps", "6", "--eval-steps", "3", *TINY_RUN))
    return output


def test_trained_directory_holds_every_artifact(trained_dir: Path, data_slice: Path) -> None:
    expected = {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "metrics.json",
        "classification_report.txt",
        "confusion_matrix.png",
        "training_curves.png",
        "README.md",
        "splits",
    }
    assert {p.name for p in trained_dir.iterdir()} == expected  # no checkpoints, no training_args.bin
    config = json.loads((trained_dir / "config.json").read_text())
    assert {int(k): v for k, v in config["id2label"].items()} == ID2LABEL
    assert json.loads((trained_dir / "tokenizer_config.json").read_text())["model_max_length"] == 32
    for picture in ("confusion_matrix.png", "training_curves.png"):
        assert (trained_dir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    splits = {name: pd.read_csv(trained_dir / "splits" / f"{name}.csv") for name in ("train", "validation", "test")}
    assert [len(splits[n]) for n in ("train", "validation", "test")] == [300, 100, 100]
    assert set(splits["test"]["label"]) <= set(LABEL_NAMES)  # English names
    original_test = pd.read_csv(data_slice / "test.csv")
    assert splits["test"]["text"].tolist() == original_test["text"].tolist()

    metrics = json.loads((trained_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_examples"] == 100
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert list(metrics["per_class"]) == list(LABEL_NAMES)
    assert set(metrics["per_class"]["joy"]) == {"precision", "recall", "f1", "support"}
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == 100
    assert [metrics["per_class"][n]["support"] for n in LABEL_NAMES] == matrix.sum(axis=1).tolist()
    assert np.trace(matrix) / 100 == pytest.approx(metrics["accuracy"])
    training = metrics["training"]
    assert training["global_step"] == 6 and training["best_checkpoint"] in ("checkpoint-3", "checkpoint-6")
    assert metrics["hyperparameters"]["max_length"] == 32
    assert (
        metrics["data_report"]["class_counts"]["test"]
        == original_test["label"]
        .value_counts()
        .rename(
            index={"기쁨": "joy", "슬픔": "sadness", "분노": "anger", "공포": "fear"}
            | {"놀람": "surprise", "혐오": "disgust", "중립": "neutral"}
        )
        .reindex(list(LABEL_NAMES), fill_value=0)
        .to_dict()
    )

    card = (trained_dir / "README.md").read_text()
    assert "Hyper-parameters" in card and "transformers" in card and "joy 기쁨" in card
    report = (trained_dir / "classification_report.txt").read_text()
    assert "macro avg" in report and "neutral 중립" in report


def test_evaluate_reproduces_metrics(trained_dir: Path, data_slice: Path, tmp_path: Path) -> None:
    stored = json.loads((trained_dir / "metrics.json").read_text())
    _invoke(
        ["evaluate", "--model", str(trained_dir), "--data", str(data_slice / "test.csv"), "--output", str(tmp_path)]
    )
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-6)
    assert evaluated["macro_f1"] == pytest.approx(stored["macro_f1"], abs=1e-6)
    assert evaluated["confusion_matrix"] == stored["confusion_matrix"]
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "classification_report.txt", "confusion_matrix.png"}
    # Without --data the model's own test split is used.
    result = _invoke(["evaluate", "--model", str(trained_dir), "--json"])
    assert json.loads(result.output)["macro_f1"] == pytest.approx(stored["macro_f1"], abs=1e-6)


def test_classify_json(trained_dir: Path) -> None:
    result = _invoke(["classify", "--model", str(trained_dir), "--json", "오늘 정말 행복해요", "[NAME] 때문에 화가 나"])
    rows = json.loads(result.output)
    assert [r["text"] for r in rows] == ["오늘 정말 행복해요", "[NAME] 때문에 화가 나"]
    for row in rows:
        assert list(row["probabilities"]) == list(LABEL_NAMES)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert row["label_ko"] and row["label_id"] == LABEL_NAMES.index(row["label"])
    table = _invoke(["classify", "--model", str(trained_dir), "[NAME] 때문에 화가 나"]).output
    assert "[NAME] 때문에 화가 나" in table and "neutral 중립" in table


def test_folds_and_generated_splits(tmp_path: Path, data_slice: Path, tiny_model_dir: Path) -> None:
    # One file only: validation and test are cut from it; 2-fold cross-validation before the final run.
    output = tmp_path / "cv"
    options = ["--max-steps", "2", "--folds", "2", "--class-weights", "none", "--early-stopping-patience", "0"]
    _invoke(_train_args(data_slice / "train.csv", tiny_model_dir, output, *options, *TINY_RUN))
    metrics = json.loads((output / "metrics.json").read_text())
    cv = metrics["cross_validation"]
    assert cv["folds"] == 2 and [f["fold"] for f in cv["per_fold"]] == [1, 2]
    scores = [f["macro_f1"] for f in cv["per_fold"]]
    assert cv["macro_f1"]["mean"] == pytest.approx(np.mean(scores))
    assert cv["macro_f1"]["std"] == pytest.approx(np.std(scores, ddof=1))
    assert sum(f["held_out_examples"] for f in cv["per_fold"]) == 300 - metrics["num_examples"]
    assert metrics["split"] == "test" and metrics["training"]["class_weights"] is None
    assert "stratified, seed 7" in metrics["data_report"]["split"]
    assert not (output / "checkpoints").exists()


def test_resume_from_last_checkpoint(tmp_path: Path, data_slice: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "resumed"
    common = ["train", "--data", str(data_slice), "--base-model", str(tiny_model_dir), "--output", str(output)]
    _invoke([*common, "--max-steps", "2", "--eval-steps", "2", "--keep-checkpoints", *TINY_RUN])
    assert (output / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    _invoke([*common, "--max-steps", "4", "--eval-steps", "2", "--resume-from-checkpoint", "last", *TINY_RUN])
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["training"]["global_step"] == 4
    assert not (output / "checkpoints").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-length", "4096"], "--max-length 4096 is longer than"),
        (["--class-weights", "sometimes"], "--class-weights"),
        (["--resume-from-checkpoint", "last"], "no checkpoint to resume from"),
    ],
)
def test_train_bad_input_is_one_line(
    tmp_path: Path, data_slice: Path, tiny_model_dir: Path, extra: list[str], message: str
) -> None:
    args = ["train", "--data", str(data_slice), "--base-model", str(tiny_model_dir), "--output", str(tmp_path / "m")]
    result = CliRunner().invoke(app, [*args, "--max-steps", "1", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_existing_model_is_not_overwritten(trained_dir: Path, data_slice: Path, tiny_model_dir: Path) -> None:
    args = ["train", "--data", str(data_slice), "--base-model", str(tiny_model_dir), "--output", str(trained_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_compute_metrics_matches_sklearn() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, size=200)
    probs = rng.dirichlet(np.ones(7), size=200)
    metrics = compute_metrics(y_true, probs)
    y_pred = probs.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert metrics["per_class"]["fear"]["f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[3], average="macro"))
    # A class absent from both truth and predictions does not drag the macro average down.
    only_two = compute_metrics([0, 1, 1], np.eye(7)[[0, 1, 1]])
    assert only_two["macro_f1"] == 1.0 and only_two["per_class"]["fear"]["support"] == 0


def test_class_weights_balance_the_classes() -> None:
    weights = class_weights_for(np.array([0] * 8 + [1] * 2))
    assert weights[0] * 8 == pytest.approx(weights[1] * 2)  # each present class carries the same total weight
    assert weights[2:].tolist() == [1.0] * 5


def test_hangul_renders_without_missing_glyphs(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix(np.eye(7, dtype=int) * 3, tmp_path / "cm.png")
    assert not [w for w in caught if "missing from font" in str(w.message) or "Glyph" in str(w.message)]
    assert (tmp_path / "cm.png").stat().st_size > 10_000


def test_weighted_loss_is_used(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from gamjeong.training.train import _make_trainer_class

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    weights = torch.tensor([1.0, 5.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = _make_trainer_class()(model=model, args=args, class_weights=weights)
    inputs = {
        "input_ids": torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]]),
        "attention_mask": torch.tensor([[1] * 4, [1, 1, 1, 0]]),
    }
    labels = torch.tensor([1, 6])
    loss, outputs = trainer.compute_loss(model, {**inputs, "labels": labels}, return_outputs=True)
    expected = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weights)
    unweighted = torch.nn.functional.cross_entropy(outputs.logits, labels)
    assert loss.item() == pytest.approx(expected.item()) and loss.item() != pytest.approx(unweighted.item())
    assert trainer.model_accepts_loss_kwargs is False  # so gradient accumulation divides our mean loss


def test_freeze_embeddings_keeps_the_word_embeddings(tmp_path: Path, data_slice: Path, tiny_model_dir: Path) -> None:
    from safetensors.numpy import load_file

    output = tmp_path / "frozen"
    _invoke(_train_args(data_slice, tiny_model_dir, output, "--max-steps", "3", "--freeze-embeddings", *TINY_RUN))
    key = "distilbert.embeddings.word_embeddings.weight"
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(output / "model.safetensors")
    np.testing.assert_array_equal(after[key], before[key])
    # the rest of the encoder did learn
    layer = "distilbert.transformer.layer.0.attention.q_lin.weight"
    assert not np.array_equal(after[layer], before[layer])
