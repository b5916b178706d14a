"""`gamjeong bench peers` without infinity-emb or a network: the directory infinity serves, its command line and
environment, its installation (pip stood in for), its answers read into labels, and the side-by-side table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gamjeong.benchmarks import peers
from gamjeong.errors import GamjeongError

# What infinity-emb 0.0.78 answered to POST /classify {"input": [two texts]} (trimmed to three labels each).
INFINITY_ANSWER: dict[str, Any] = {
    "object": "classify",
    "data": [
        [{"score": 0.706, "label": "joy"}, {"score": 0.073, "label": "sadness"}, {"score": 0.073, "label": "neutral"}],
        [{"score": 0.226, "label": "disgust"}, {"score": 0.419, "label": "fear"}, {"score": 0.139, "label": "sadness"}],
    ],
    "model": ".",
    "usage": {"prompt_tokens": 17, "total_tokens": 17},
}


def test_the_prepared_directory_holds_the_int8_graph_under_a_quantize_name(tiny_int8_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "infinity-model"
    prepared = peers.prepare_infinity_dir(tiny_int8_dir, target)
    assert prepared["precision"] == "int8" and prepared["onnx_file"] == "model_quantized.onnx"
    onnx_files = [p.name for p in target.iterdir() if p.suffix == ".onnx"]
    assert onnx_files == ["model_quantized.onnx"]  # the only graph infinity can pick
    assert "quantize" in onnx_files[0]
    assert (target / "model_quantized.onnx").resolve() == (tiny_int8_dir / "model.onnx").resolve()
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert not (target / "manifest.json").exists()
    # A second run over what infinity left in its working directory starts clean.
    (target / ".infinity_cache").mkdir()
    (target / ".infinity_cache" / "x").write_text("stale")
    peers.prepare_infinity_dir(tiny_int8_dir, target)
    assert not (target / ".infinity_cache").exists() and (target / "model_quantized.onnx").is_file()


def test_a_directory_without_a_tokenizer_is_refused_in_one_sentence(tiny_int8_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "export"
    broken.mkdir()
    for name in ("model.onnx", "config.json"):
        (broken / name).symlink_to(tiny_int8_dir / name)
    with pytest.raises(GamjeongError, match="tokenizer"):
        peers.prepare_infinity_dir(broken, tmp_path / "prepared")
    with pytest.raises(GamjeongError, match=r"no model\.onnx"):
        peers.prepare_infinity_dir(tmp_path, tmp_path / "prepared")


def test_infinity_command_line_and_environment(tmp_path: Path) -> None:
    command = peers.infinity_command(tmp_path / "venv" / "bin" / "infinity_emb", 7997)
    assert command[:2] == [str(tmp_path / "venv" / "bin" / "infinity_emb"), "v2"]
    options = " ".join(command[2:])
    for part in ("--model-id .", "--engine optimum", "--device cpu", "--port 7997", "--host 127.0.0.1"):
        assert part in options
    assert "--no-model-warmup" in command and "--onnx-disable-optimize" in command
    env = peers.infinity_env(tmp_path / "hf")
    assert env["DO_NOT_TRACK"] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == str(tmp_path / "hf")


def test_install_puts_cpu_torch_first_and_is_done_once(tmp_path: Path) -> None:
    venv = tmp_path / "infinity-venv"
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> SimpleNamespace:
        calls.append(command)
        if command[1:3] == ["-m", "venv"]:
            (venv / "bin").mkdir(parents=True)
        elif peers.INFINITY_REQUIREMENT in command:
            (venv / "bin" / "infinity_emb").write_text("#!/bin/sh\n")
        return SimpleNamespace(returncode=0)

    assert peers.ensure_infinity(venv, run=fake_run) == venv / "bin" / "infinity_emb"
    assert calls[0] == [sys.executable, "-m", "venv", str(venv)]
    assert calls[1][-3:] == ["pip", "install", "torch==2.13.0"]  # the CPU build before anything can pull CUDA
    assert calls[2][-3:] == ["pip", "install", "infinity-emb[optimum,server]==0.0.78"]
    assert peers.ensure_infinity(venv, run=fake_run) == venv / "bin" / "infinity_emb"
    assert len(calls) == 3  # installed: nothing runs again


def test_a_virtualenv_set_up_by_hand_is_used_as_it_is(tmp_path: Path) -> None:
    venv = tmp_path / "mine"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "infinity_emb").write_text("#!/bin/sh\n")
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> SimpleNamespace:
        calls.append(command)
        return SimpleNamespace(returncode=0)

    assert peers.ensure_infinity(venv, run=fake_run) == venv / "bin" / "infinity_emb"
    assert len(calls) == 1 and "import infinity_emb" in calls[0][-1]  # only the import check, no pip


def test_a_failed_install_says_what_to_do(tmp_path: Path) -> None:
    def failing_run(command: list[str], **kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(returncode=1 if "install" in command else 0)

    with pytest.raises(GamjeongError, match="--infinity-venv") as raised:
        peers.ensure_infinity(tmp_path / "venv", run=failing_run)
    assert "torch==2.13.0" in str(raised.value) and "\n" not in str(raised.value)
    assert (tmp_path / "venv-install.log").is_file()


def test_infinity_answers_become_labels_and_agreement() -> None:
    scores = peers.infinity_scores(INFINITY_ANSWER)
    assert [peers.top_label(s) for s in scores] == ["joy", "fear"]  # the highest score, wherever it is listed
    assert peers.INFINITY_API.body("안녕") == {"input": ["안녕"]}
    assert peers.INFINITY_API.answered(INFINITY_ANSWER) == 2
    ours = [{"joy": 0.706, "sadness": 0.073, "neutral": 0.073}, {"disgust": 0.5, "fear": 0.3, "sadness": 0.2}]
    check = peers.agreement(ours, scores)
    assert check == {"texts": 2, "same_label": 1, "max_abs_prob_diff": pytest.approx(0.274)}
    with pytest.raises(GamjeongError, match="unexpected shape"):
        peers.infinity_scores({"error": "model not found"})


def _results() -> dict[str, Any]:
    rows = []
    for server, transport, rates in (
        ("gamjeong", "gRPC", (200.0, 300.0)),
        ("gamjeong", "HTTP", (150.0, 240.0)),
        ("infinity-emb", "HTTP", (100.0, 200.0)),
    ):
        for concurrency, rate in zip((1, 16), rates, strict=True):
            rows.append(
                {"server": server, "transport": transport, "concurrency": concurrency, "texts_per_s": rate,
                 "p50_ms": 5.0, "p99_ms": 9.5, "server_cores": 1.2, "errors": 0}
            )  # fmt: skip
    return {
        "texts": "test texts",
        "model_dir": "/models/exp",
        "settings": {"duration_s": 2.0},
        "environment": {"date_utc": "today", "cpu_model": "cpu", "logical_cpus": 2, "load_average_at_start": [0.1]},
        "infinity": {
            "version": "0.0.78",
            "command": "v2 --model-id .",
            "onnx_file": "model_quantized.onnx",
            "precision": "int8",
        },
        "agreement": {"texts": 32, "same_label": 32, "max_abs_prob_diff": 0.0},
        "rows": rows,
    }


def test_the_table_and_the_ratios(tmp_path: Path) -> None:
    results = _results()
    assert peers.speedups(results["rows"]) == {"gRPC": {"1": 2.0, "16": 1.5}, "HTTP": {"1": 1.5, "16": 1.2}}
    paths = peers.write_peers_results(results, tmp_path)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "| infinity-emb | HTTP | 16 | 200.0 | 5.0 | 9.5 | 1.2 | 0 |" in markdown
    assert "| gamjeong | gRPC | 1 | 200.0 |" in markdown
    assert "32/32 texts with the same label" in markdown and "×2.00 at 1" in markdown
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["rows"] == results["rows"]


def test_the_command_is_registered_with_its_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gamjeong.cli", "bench", "peers", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--model", "--concurrencies", "--duration", "--data", "--output", "--infinity-venv"):
        assert flag in result.stdout


# A stand-in for infinity_emb: answers GET /health and POST /classify as 0.0.78 does, over keep-alive HTTP/1.1, and
# only when started from a directory whose one ONNX file has "quantize" in its name (as `--model-id .` needs).
FAKE_INFINITY = """#!{python}
import json, pathlib, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
if [p.name for p in pathlib.Path(".").glob("*.onnx")] != ["model_quantized.onnx"] or "--model-id" not in sys.argv:
    sys.exit(3)
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def _send(self, document):
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._send({{"unix": 1.0}})
    def do_POST(self):
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
        self._send({{"object": "classify", "data": [[{{"score": 0.9, "label": "joy"}}, {{"score": 0.1, "label": "fear"}}]
                                                   for _ in texts]}})
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
"""


def test_infinity_is_started_in_the_prepared_directory_and_driven_by_the_http_load(
    tiny_int8_dir: Path, tmp_path: Path
) -> None:
    executable = tmp_path / "venv" / "bin" / "infinity_emb"
    executable.parent.mkdir(parents=True)
    executable.write_text(FAKE_INFINITY.format(python=sys.executable))
    executable.chmod(0o755)
    prepared = Path(peers.prepare_infinity_dir(tiny_int8_dir, tmp_path / "out" / "infinity-model")["dir"])
    config = peers.PeersConfig(model=tiny_int8_dir, concurrencies=[1, 4], duration_s=0.3, warmup_s=0.0)
    with peers.started_infinity(executable, prepared, tmp_path / "infinity.log", 20) as (address, process):
        assert [peers.top_label(s) for s in peers.infinity_classify(address, ["하나", "둘"])] == ["joy", "joy"]
        rows = peers.measure_infinity(address, process.pid, config, ["기뻐요", "무서워요", "슬퍼요"], lambda m: None)
    assert process.poll() is not None  # stopped on leaving
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert row["errors"] == 0 and row["texts"] == row["requests"] > 0 and row["p50_ms"] > 0, row
        assert row["server_cores"] is not None


def test_an_infinity_that_exits_at_start_is_reported(tmp_path: Path) -> None:
    executable = tmp_path / "infinity_emb"
    executable.write_text(FAKE_INFINITY.format(python=sys.executable))
    executable.chmod(0o755)
    with (
        pytest.raises(GamjeongError, match="exited with code 3"),
        peers.started_infinity(executable, tmp_path, tmp_path / "infinity.log", 20),
    ):
        pass
