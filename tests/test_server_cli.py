"""`gamjeong serve` as a real process: JSON logs, health SERVING after warm-up, a call, and SIGTERM -> clean exit."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import kill_if_running
from typer.testing import CliRunner

from gamjeong.clients import EmotionClient


def _log_lines(process: subprocess.Popen[str]) -> queue.Queue[dict]:
    """Parsed JSON log lines of the server's stderr, as they come (non-JSON lines are kept as {"raw": ...})."""
    lines: queue.Queue[dict] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            try:
                lines.put(json.loads(line))
            except ValueError:
                lines.put({"raw": line})

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[dict], message: str, seen: list[dict]) -> dict:
    while True:
        entry = lines.get(timeout=120)
        seen.append(entry)
        if entry.get("message") == message:
            return entry


def test_serve_logs_json_serves_and_stops_cleanly_on_sigterm(tiny_int8_dir: Path) -> None:
    env = {**os.environ, "GAMJEONG_METRICS_PORT": "-1", "GAMJEONG_MAX_WAIT_MS": "1"}
    command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(tiny_int8_dir)]
    command += ["--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[dict] = []
    try:
        lines = _log_lines(process)
        port = _wait_for(lines, "listening", seen)["port"]
        ready = _wait_for(lines, "model ready", seen)
        assert ready["backend"] == "onnx-int8" and ready["execution_provider"] == "CPUExecutionProvider"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        with EmotionClient(f"127.0.0.1:{port}") as client:
            assert client.model_info().limits["max_wait_ms"] == 1.0  # read from GAMJEONG_MAX_WAIT_MS
            assert len(client.classify(["오늘 정말 행복해요"])) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        _wait_for(lines, "stopped", seen)
    finally:
        kill_if_running(process)
    messages = [entry.get("message") for entry in seen]
    assert messages.index("listening") < messages.index("model ready") < messages.index("shutting down")
    assert any(entry.get("signal") == "SIGTERM" for entry in seen)


def test_serve_without_a_model_is_one_sentence(tmp_path: Path) -> None:
    from gamjeong.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--port", "0", "--metrics-port", "-1"])
    assert result.exit_code == 2
    assert "error:" in result.output and "neither a trained nor an exported" in result.output
    assert "Traceback" not in result.output


def test_the_event_loop_is_uvloop_where_installed_and_asyncio_on_request(monkeypatch) -> None:
    import asyncio

    import pytest

    from gamjeong.errors import GamjeongError
    from gamjeong.server.app import run_event_loop

    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_event_loop(main(), "auto")
    run_event_loop(main(), "asyncio")
    assert seen[0].startswith("uvloop") and seen[1].startswith("asyncio")
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # as if it were not installed
    run_event_loop(main(), "auto")
    assert seen[2].startswith("asyncio")
    with pytest.raises(GamjeongError, match="pip install uvloop"):
        run_event_loop(main(), "uvloop")
