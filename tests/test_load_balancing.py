"""Client-side load balancing (issue 14): one client, two `gamjeong serve` processes, and each server's own metrics
show that both served calls. gRPC keeps one HTTP/2 connection per channel, so without round_robin one server would
get everything (checked too)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from gamjeong.clients import AsyncEmotionClient, EmotionClient, LoadBalancing
from gamjeong.clients.balancing import channel_target, service_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "a server exited while starting"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"the server on port {port} never reported SERVING")


@pytest.fixture(scope="module")
def two_servers(tiny_int8_dir: Path) -> Iterator[list[tuple[int, int]]]:
    """(gRPC port, metrics port) of two server processes on the same model."""
    servers = []
    for _ in range(2):
        port, metrics_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(tiny_int8_dir)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), "--drain-s", "0"]
        servers.append((subprocess.Popen(command, stderr=subprocess.DEVNULL), port, metrics_port))
    try:
        for process, port, _ in servers:
            _wait_serving(port, process)
        yield [(port, metrics_port) for _, port, metrics_port in servers]
    finally:
        for process, _, _ in servers:
            process.terminate()
        for process, _, _ in servers:
            process.wait(60)


def _classify_calls(metrics_port: int) -> int:
    """Successful Classify calls a server has answered, from its own Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(r'^gamjeong_requests_total\{code="OK",method="Classify"\} (\S+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def _counts(servers: list[tuple[int, int]]) -> list[int]:
    return [_classify_calls(metrics_port) for _, metrics_port in servers]


def test_round_robin_spreads_one_clients_calls_over_both_servers(two_servers) -> None:
    before = _counts(two_servers)
    addresses = [f"127.0.0.1:{port}" for port, _ in two_servers]
    calls = 0
    with EmotionClient(addresses, load_balancing="round_robin") as client:
        grpc.channel_ready_future(client.channel).result(timeout=30)
        # Rounds of 10 calls until both servers answered some: round_robin only uses connected servers, and the
        # second connection may still be opening on a busy machine. pick_first never gets there (test below).
        for _ in range(20):
            for i in range(10):
                client.classify([f"오늘 정말 행복해요 {calls + i}"])
            calls += 10
            served = [after - b for after, b in zip(_counts(two_servers), before, strict=True)]
            if all(n > 0 for n in served):
                break
    assert sum(served) == calls
    assert all(n > 0 for n in served), f"calls per server: {served}"


async def test_the_async_client_balances_too(two_servers) -> None:
    before = _counts(two_servers)
    target = ",".join(f"127.0.0.1:{port}" for port, _ in two_servers)  # one comma-separated string
    calls = 0
    async with AsyncEmotionClient(target, load_balancing=LoadBalancing.ROUND_ROBIN) as client:
        await client.channel.channel_ready()
        for _ in range(20):  # rounds, as above
            await asyncio.gather(*(client.classify([f"헐 {calls + i}"]) for i in range(10)))
            calls += 10
            served = [after - b for after, b in zip(_counts(two_servers), before, strict=True)]
            if all(n > 0 for n in served):
                break
    assert sum(served) == calls and all(n > 0 for n in served), f"calls per server: {served}"


def test_without_round_robin_one_connection_takes_every_call(two_servers) -> None:
    before = _counts(two_servers)
    with EmotionClient([f"127.0.0.1:{port}" for port, _ in two_servers]) as client:  # gRPC's pick_first
        for i in range(10):
            client.classify([f"안녕하세요 {i}"])
    served = sorted(after - b for after, b in zip(_counts(two_servers), before, strict=True))
    assert served == [0, 10]


def test_the_classify_command_takes_lb(two_servers) -> None:
    from gamjeong.cli import app

    before = _counts(two_servers)
    target = ",".join(f"127.0.0.1:{port}" for port, _ in two_servers)
    texts = [f"문장 {i}" for i in range(12)]
    result = CliRunner().invoke(app, ["classify", "--server", target, "--lb", "round_robin", "--json", *texts])
    assert result.exit_code == 0, result.output
    assert sum(after - b for after, b in zip(_counts(two_servers), before, strict=True)) >= 1
    bad = CliRunner().invoke(app, ["classify", "--server", target, "--lb", "random", "x"])
    assert bad.exit_code == 2 and "round_robin" in bad.output


def test_the_chat_command_takes_lb(two_servers) -> None:
    from gamjeong.cli import app

    target = ",".join(f"127.0.0.1:{port}" for port, _ in two_servers)
    result = CliRunner().invoke(app, ["chat", "--server", target, "--lb", "round_robin"], input="헐\nㅋㅋㅋ\n")
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.splitlines()] == ["1", "2"]


def test_targets_and_service_config() -> None:
    assert channel_target("dns:///gamjeong-headless.ml.svc.cluster.local:50051").startswith("dns:///")
    assert channel_target(["10.0.0.1:50051", "10.0.0.2:50051"]) == "ipv4:10.0.0.1:50051,10.0.0.2:50051"
    assert channel_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError, match="dns:///"):
        channel_target(["a.example:1", "b.example:1"])
    assert '"round_robin"' in (service_config(1, "round_robin") or "")
    assert service_config(1, None) is None
    with pytest.raises(ValueError):
        EmotionClient("127.0.0.1:1", load_balancing="random")


async def test_connections_are_closed_after_max_connection_age_and_calls_carry_on(tiny_int8_dir: Path) -> None:
    """New pods behind a headless Service are found when clients re-resolve, which happens when a connection ends:
    --max-connection-age-s ends them (GOAWAY) and the client reconnects without a failed call."""
    from gamjeong.predictor import load_predictor
    from gamjeong.server.app import GamjeongServer
    from gamjeong.server.settings import load_settings

    predictor = load_predictor(tiny_int8_dir)
    settings = load_settings(
        model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, max_connection_age_s=0.3,
        max_connection_age_grace_s=5,
    )  # fmt: skip
    assert GamjeongServer(settings)._connection_age_options() == [
        ("grpc.max_connection_age_ms", 300),
        ("grpc.max_connection_age_grace_ms", 5000),
    ]
    server = GamjeongServer(settings, predictor_factory=lambda: predictor)
    await server.start()
    try:
        async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
            answered = []
            for i in range(8):  # 8 calls over ~1.2 s: several connection ages of 0.3 s, retries off
                answered += await client.classify([f"문장 {i}"])
                await asyncio.sleep(0.15)
    finally:
        await server.stop(0)
    assert len(answered) == 8
