"""`gamjeong serve` as a real process, probed from outside (issue 12): the flags of the metrics endpoint and the drain,
a model directory without a tokenizer, JSON-only logs, and exit within the grace period with work in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import kill_if_running, pump
from typer.testing import CliRunner

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc


def test_serve_documents_the_metrics_host_and_the_drain() -> None:
    from gamjeong.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--metrics-host" in result.output and "--drain-s" in result.output


def test_a_model_without_a_tokenizer_is_one_sentence_before_the_model_loads(tiny_int8_dir: Path, tmp_path) -> None:
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_int8_dir, broken)
    (broken / "tokenizer.json").unlink()
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["files"]["tokenizer.json"]  # so the manifest check passes and the tokenizer itself is missed
    (broken / "manifest.json").write_text(json.dumps(manifest))
    command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(broken), "--host", "127.0.0.1"]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--port", "0", "--metrics-port", "-1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no tokenizer" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "AttributeError" not in result.stderr
    # Before the model loads: no "model ready", no ONNX Runtime session (the run took ~7 s when it crashed late).
    assert "onnxruntime session" not in result.stderr
    assert time.monotonic() - started < 60


def test_sigterm_drains_then_exits_within_the_grace_period_with_json_logs_only(tiny_int8_dir: Path) -> None:
    grace_s, drain_s = 2.0, 0.5
    command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(tiny_int8_dir), "--host", "127.0.0.1"]
    command += ["--port", "0", "--metrics-port", "0", "--grace-s", str(grace_s), "--drain-s", str(drain_s)]
    command += ["--log-format", "json", "--max-batch-size", "4"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": ""})
    lines: list[str] = []
    reader = pump(process.stderr, lines)
    try:
        port = _port_when_ready(lines)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.EmotionClassifierStub(channel)
        # A bad request (gRPC's own handler code path), a bulk job and an open chat are in flight at SIGTERM.
        raw = channel.unary_unary("/gamjeong.v1.EmotionClassifier/Classify")
        try:
            raw(b"\xff\xff\xff\xff", timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        bulk = stub.ClassifyStream(pb.ClassifyStreamRequest(texts=["긴 작업의 문장입니다"] * 100_000), timeout=120)
        next(bulk)
        hold = threading.Event()

        def feed():
            yield pb.ChatMessage(id="1", text="안녕하세요")
            hold.wait(60)

        chat = stub.ClassifyChat(feed(), timeout=120)
        assert next(chat).id == "1"
        health = health_pb2_grpc.HealthStub(channel)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(drain_s / 2)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as probe:  # a new connection during the drain
            status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=30) == 0
        elapsed = time.monotonic() - signalled
        hold.set()
        for call in (bulk, chat):
            call.cancel()
        del health
        channel.close()
    finally:
        kill_if_running(process)
    reader.join(10)
    assert elapsed <= grace_s + 0.3, f"exited {elapsed:.2f} s after SIGTERM, grace {grace_s} s\n{''.join(lines)}"
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}\n{''.join(lines)}") from None
    text = json.dumps(entries, ensure_ascii=False)
    for noise in ("Task was destroyed", "never retrieved", "not handled", "CancelledError"):
        assert noise not in text, f"{noise!r} in the logs:\n{text}"
    messages = [e.get("message") for e in entries]
    assert messages.index("shutting down") < messages.index("refusing new calls") < messages.index("stopped")


def _port_when_ready(lines: list[str]) -> int:
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.startswith("{"):
                entry = json.loads(line)
                port = entry.get("port", port) if entry.get("message") == "listening" else port
                if entry.get("message") == "model ready" and port:
                    return int(port)
        time.sleep(0.05)
    raise AssertionError("the server did not get ready:\n" + "".join(lines))
