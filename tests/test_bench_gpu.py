"""`gamjeong bench gpu --device cpu`: the GPU check's steps on a tiny model, its one folder of at most 8 files and their
shape; and how a failed step is recorded. Never timing thresholds."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gamjeong.benchmarks.gpu_check import RESULT_FILES, TARGETS, _Steps, figures
from gamjeong.cli import app

runner = CliRunner()


def test_gpu_check_on_the_cpu_writes_one_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    import onnxruntime

    out = tmp_path / "gpu"
    out.mkdir()
    (out / "server.md").write_text("an earlier run's file")
    result = runner.invoke(
        app,
        [
            "bench", "gpu", "--device", "cpu", "--model", str(tiny_model_dir), "--output", str(out),
            "--client-processes", "2", "--duration", "0.3", "--echo-processes", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(RESULT_FILES) and len(files) <= 8
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["failed_steps"] == [] and all(s["status"] == "ok" for s in summary["steps"].values())
    assert list(summary["steps"]) == [
        "model", "export", "bench model", "bench server", "load generator alone"
    ]  # fmt: skip
    assert summary["environment"]["onnxruntime"]["version"] == onnxruntime.__version__
    figures = summary["figures"]
    assert figures["top_concurrency"] == 4 and figures["errors"] == 0
    assert figures["unary_256_texts_per_s"] > 0 and figures["chat_256_texts_per_s"] > 0
    assert figures["stream_64_texts_per_s"] > 0 and figures["unary_1_p50_ms"] > 0
    assert figures["gpu_busy_256_pct"] == "no GPU" and figures["load_generator_headroom"] > 0
    assert figures["client_busy_share_unary_top"] == round(figures["client_cores_unary_top"] / 2, 3)
    assert set(figures["model_p50_ms_one_text"]) == {"pytorch-fp32", "onnx-fp32"}
    assert summary["load_generator_alone"][0]["server"] == "echo"

    model = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert [b["name"] for b in model["backends"] if b["status"] == "ok"] == ["pytorch-fp32", "onnx-fp32"]
    server = json.loads((out / "server.json").read_text(encoding="utf-8"))
    rows = server["rows"]
    assert {(r["mode"], r["concurrency"]) for r in rows} == {
        (m, c) for m in ("unary", "stream", "chat") for c in (1, 4)
    }
    for row in rows:
        assert row["errors"] == 0 and row["texts_per_s"] > 0 and row["gpu"] == "no GPU"
        # one client runs in one process; four are split over the two client processes
        assert row["client_processes"] == min(row["concurrency"], 2) and row["client_cores"] > 0
        assert row["server_cpu_source"] == "process tree" and row["server_cores"] > 0
    assert "2 processes" in server["settings"]["load"]

    markdown = (out / "summary.md").read_text(encoding="utf-8")
    assert all(what in markdown for _, what, _, _ in TARGETS) and "n/a (CPU)" in markdown
    assert "onnxruntime (the imported module)" in markdown and "GPU: no GPU" in markdown
    assert "server.md" not in markdown and (out / "server.md").read_text() != "an earlier run's file"


def test_a_failed_step_skips_the_steps_that_need_it() -> None:
    steps = _Steps(lambda message: None)
    model = steps.run("model", [], lambda: 1 / 0)
    export = steps.run("export", [model], lambda: "never")
    other = steps.run("other", [], lambda: "ran")
    assert (model, export, other) == (None, None, "ran")
    assert steps.record["model"]["status"] == "failed" and "division by zero" in steps.record["model"]["reason"]
    assert steps.record["export"]["status"] == "skipped" and steps.failed == ["model", "export"]


def test_figures_from_the_rows() -> None:
    def row(mode: str, concurrency: int, texts_per_s: float, **extra: object) -> dict:
        return {"mode": mode, "concurrency": concurrency, "texts_per_s": texts_per_s, "requests_per_s": texts_per_s,
                "p50_ms": 1.5, "errors": 0, "server_cores": 1.0, "client_cores": 0.5, "client_processes": 2,
                "gpu": "no GPU"} | extra  # fmt: skip

    server = {
        "rows": [
            row("unary", 1, 100), row("unary", 256, 900, gpu=[{"util_mean_pct": 55.0}], errors=2),
            row("stream", 64, 3000), row("stream", 256, 2000), row("chat", 256, 800),
        ],
        "servers": [{"raw": {"grouped": {"texts_per_s": 1200}}}],
    }  # fmt: skip
    echo = {"rows": [row("unary", 256, 2700)]}
    result = figures(None, server, echo)
    assert result["unary_256_texts_per_s"] == 900 and result["unary_256_ratio_to_raw"] == 0.75
    assert result["stream_64_texts_per_s"] == 3000 and result["chat_256_texts_per_s"] == 800
    assert result["gpu_busy_256_pct"] == 55.0 and result["errors"] == 2 and result["unary_1_p50_ms"] == 1.5
    assert result["load_generator_headroom"] == 3.0 and result["client_busy_share_unary_top"] == 0.25
