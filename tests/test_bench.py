"""`gamjeong bench model` on a tiny model: the shape and sanity of the results, never timing thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gamjeong.cli import app

runner = CliRunner()


def _bench(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["bench", "model", *args])
    return result.exit_code, result.output


def _check_results(output: Path, requested: list[str]) -> dict:
    for name in ("results.json", "results.md", "latency.png"):
        assert (output / name).is_file() and (output / name).stat().st_size > 0, name
    results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    by_name = {b["name"]: b for b in results["backends"]}
    assert sorted(by_name) == sorted(requested)
    measured = [name for name, b in by_name.items() if b["status"] == "ok"]
    assert "pytorch-fp32" in measured
    for name, entry in by_name.items():
        if entry["status"] != "ok":
            assert entry["status"] == "skipped" and entry["reason"], entry
            continue
        assert 0.0 <= entry["agreement_with_pytorch_fp32"] <= 1.0
        assert entry["max_abs_prob_diff"] >= 0.0
        assert entry["size_on_disk_mb"] > 0 and entry["load_s"] > 0
        rows = [r for r in results["rows"] if r["backend"] == name]
        cells = {(b, s) for b in results["settings"]["batch_sizes"] for s in results["settings"]["seq_lengths"]}
        assert {(r["batch_size"], r["seq_len"]) for r in rows} == cells
        for row in rows:
            assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
            assert row["texts_per_s"] > 0 and row["iterations"] >= 1
            assert row["tokenize_p50_ms"] > 0 and row["inference_p50_ms"] > 0
    environment = results["environment"]
    assert environment["cpu_model"] and environment["libraries"]["torch"] and environment["date_utc"]
    markdown = (output / "results.md").read_text(encoding="utf-8")
    assert all(name in markdown for name in requested)
    return results


def test_quick_pytorch_backends_in_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    requested = ["pytorch-fp32", "pytorch-bf16", "pytorch-fp16"]
    code, output = _bench(
        "--quick", "--model", str(tiny_model_dir), "--backends", ",".join(requested),
        "--seq-lengths", "8,16", "--isolation", "inprocess", "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, output
    results = _check_results(tmp_path / "out", requested)
    assert results["settings"]["batch_sizes"] == [4] and results["settings"]["seq_lengths"] == [8, 16]
    assert results["random_weights"] is False  # a given directory: its predictions are its own
    fp16 = next(b for b in results["backends"] if b["name"] == "pytorch-fp16")
    assert fp16["status"] == "skipped" and "CUDA" in fp16["reason"]  # no GPU in CI
    # the same texts gave the same model the same predictions
    assert next(b for b in results["backends"] if b["name"] == "pytorch-fp32")["agreement_with_pytorch_fp32"] == 1.0


def test_quick_default_model_in_subprocess(tmp_path: Path) -> None:
    """No --model: a random tiny model is built; each backend runs in its own worker process."""
    code, output = _bench("--quick", "--backends", "pytorch-fp32", "--output", str(tmp_path / "out"))
    assert code == 0, output
    results = _check_results(tmp_path / "out", ["pytorch-fp32"])
    assert results["random_weights"] is True and results["note"] == "random weights: timing only"
    assert "random weights: timing only" in (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    entry = results["backends"][0]
    assert entry["peak_rss_mb"] > 0 and entry["rss_delta_mb"] is not None  # measured in the worker process


def test_inputs_are_cut_at_exactly_seq_len(tiny_model_dir: Path) -> None:
    from gamjeong.benchmarks.texts import load_texts, texts_of_length

    from gamjeong.predictor import load_predictor

    predictor = load_predictor(tiny_model_dir, max_length=48)
    sentences = load_texts().texts
    for seq_len in (8, 32, 48):
        texts = texts_of_length(predictor.tokenizer, sentences, seq_len, 6)
        predictor.max_length = seq_len
        assert {len(e.input_ids) for e in predictor.encode(texts)} == {seq_len}
        assert all(t.strip() for t in texts)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--seq-lengths", "0"], "--seq-lengths"),
        (["--backends", "onnx-int4"], "unknown backend 'onnx-int4'"),
        (["--isolation", "threads"], "--isolation"),
    ],
)
def test_bad_flags_are_one_sentence(args: list[str], message: str, tmp_path: Path) -> None:
    code, output = _bench("--quick", "--output", str(tmp_path), *args)
    assert code == 2 and message in output and "Traceback" not in output


def test_not_an_exported_dir_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = _bench("--quick", "--onnx", str(tiny_model_dir), "--output", str(tmp_path))
    assert code == 2 and "not an exported directory" in output
