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
            assert row["tokens_per_s"] == pytest.approx(row["texts_per_s"] * row["seq_len"], rel=1e-3)
        real = entry["real_text"]  # the data's own texts under four groupings
        assert real["texts"] == 32 and real["mean_tokens_per_text"] > 2
        assert real["one_per_call"]["padding_ratio"] == 1.0 and real["one_per_call"]["mean_texts_per_call"] == 1
        # Sorting can only remove padding: the whole set sorted pads no more than arrival-order batches of the same size.
        assert real["sorted_all"]["padding_ratio"] <= real["arrival_batches"]["padding_ratio"]
        for key in ("one_per_call", "grouped", "sorted_all", "arrival_batches"):
            assert real[key]["texts_per_s"] > 0 and real[key]["tokens_per_s"] > real[key]["texts_per_s"]
    environment = results["environment"]
    assert environment["cpu_model"] and environment["libraries"]["torch"] and environment["date_utc"]
    markdown = (output / "results.md").read_text(encoding="utf-8")
    assert all(name in markdown for name in requested) and "Real texts, as they are" in markdown
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


@pytest.fixture(scope="module")
def tiny_fp32_onnx_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    from gamjeong.export.exporter import ExportConfig, export_model

    output = tmp_path_factory.mktemp("bench-onnx") / "fp32"
    return export_model(ExportConfig(model=tiny_model_dir, output=output, quantize="none", force=True))


def test_quick_pytorch_vs_onnx(tiny_model_dir: Path, tiny_fp32_onnx_dir: Path, tmp_path: Path) -> None:
    """An exported fp32 dir given with --onnx; int8 exported on the fly from --model; agreement against PyTorch fp32."""
    requested = ["pytorch-fp32", "onnx-fp32", "onnx-int8"]
    code, output = _bench(
        "--quick", "--model", str(tiny_model_dir), "--onnx", str(tiny_fp32_onnx_dir), "--backends", ",".join(requested),
        "--isolation", "inprocess", "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, output
    results = _check_results(tmp_path / "out", requested)
    by_name = {b["name"]: b for b in results["backends"]}
    assert all(by_name[name]["status"] == "ok" for name in requested)
    assert by_name["onnx-fp32"]["model_dir"] == str(tiny_fp32_onnx_dir)
    assert Path(by_name["onnx-int8"]["model_dir"]) == tmp_path / "out" / "exported" / "onnx-int8"
    assert by_name["onnx-int8"]["export"]["quantization"]["mode"] == "int8"
    # fp32 ONNX computes the same function as PyTorch fp32: only float rounding differs
    assert (
        by_name["onnx-fp32"]["max_abs_prob_diff"] < 1e-3 and by_name["onnx-fp32"]["agreement_with_pytorch_fp32"] > 0.9
    )


def test_onnx_only_has_no_reference(tiny_fp32_onnx_dir: Path, tmp_path: Path) -> None:
    code, output = _bench(
        "--quick", "--onnx", str(tiny_fp32_onnx_dir), "--isolation", "inprocess", "--output", str(tmp_path)
    )
    assert code == 0, output
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    (entry,) = results["backends"]
    assert entry["name"] == "onnx-fp32" and entry["status"] == "ok"
    assert entry["agreement_with_pytorch_fp32"] is None and "not measured" in entry["agreement_note"]
    assert {r["backend"] for r in results["rows"]} == {"onnx-fp32"}


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


def test_quick_server_against_a_running_server(tiny_fp32_onnx_dir: Path, tmp_path: Path) -> None:
    """`bench server --target` on a `gamjeong serve` subprocess: every mode and concurrency, batch sizes, raw ratios."""
    from gamjeong.benchmarks.server_bench import ServerBenchConfig, started_server

    settings = ServerBenchConfig(model=[tiny_fp32_onnx_dir], threads=1)
    with started_server(tiny_fp32_onnx_dir, settings, tmp_path / "server.log") as (target, metrics, _):
        result = runner.invoke(
            app,
            [
                "bench", "server", "--target", target, "--metrics", metrics, "--model", str(tiny_fp32_onnx_dir),
                "--quick", "--concurrencies", "1,3", "--duration", "0.5", "--threads", "1",
                "--output", str(tmp_path / "out"),
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("results.json", "results.md", "throughput.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    rows = results["rows"]
    assert {(r["mode"], r["concurrency"]) for r in rows} == {
        (m, c) for m in ("unary", "stream", "chat") for c in (1, 3)
    }
    for row in rows:
        assert row["server"] == "onnx-fp32" and row["errors"] == 0, row
        assert row["requests"] > 0 and row["texts_per_s"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        batches = row["batches"]
        assert batches["model_calls"] > 0 and 1 <= batches["mean_batch_size"] <= 32
        # Real tokens come from the server's gamjeong_batch_real_tokens; padding can only add to them.
        assert row["tokens_per_s"] > row["texts_per_s"] and batches["padding_ratio"] >= 1.0
        assert row["server_cores"] > 0  # from the server's process_cpu_seconds_total
        if row["mode"] == "stream":  # texts per call beyond one per request: the stream is batched
            assert row["texts"] == row["requests"] * 16
    server = results["servers"][0]
    assert server["raw"]["backend"] == "onnx-fp32" and server["raw"]["grouped"]["texts_per_s"] > 0
    assert {"unary", "stream", "chat"} == set(server["ratios"])
    assert server["ratios"]["unary"]["p50_latency_ratio_at_c1"] > 0
    assert server["ratios"]["chat"]["throughput_ratio_at_highest"] > 0


def test_server_bad_flags_are_one_sentence(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "server", "--modes", "unary,bulk", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "unknown mode 'bulk'" in result.output
    result = runner.invoke(app, ["bench", "server", "--model", str(tmp_path / "nope"), "--output", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_paired_overhead_times_raw_server_and_an_empty_call_per_text(tiny_int8_dir: Path) -> None:
    from gamjeong.benchmarks.paired import paired_overhead
    from gamjeong.predictor import load_predictor
    from gamjeong.server.background import BackgroundServer
    from gamjeong.server.settings import load_settings

    predictor = load_predictor(tiny_int8_dir)
    settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1)
    server = BackgroundServer(settings)  # the default layout: instances and the solo session
    server.start()
    try:
        result = paired_overhead(predictor, server.target, ["좋아요", "싫어요", "그냥 그래요"], 0.2)
    finally:
        server.stop(0)
    assert result["calls"] >= 20
    assert result["raw_p50_ms"] > 0 and result["empty_call_p50_ms"] > 0
    # a Classify call does everything an empty call does, and runs the model too
    assert result["server_p50_ms"] > result["empty_call_p50_ms"]
