"""A `gamjeong serve` process for the server benchmark: started on free ports, waited for until its health check says
SERVING, stopped with SIGTERM; and the batch sizes its metrics endpoint reports."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gamjeong.errors import GamjeongError

if TYPE_CHECKING:
    from .server_bench import ServerBenchConfig

HEALTH_SERVICE = "gamjeong.v1.EmotionClassifier"


# --- starting a server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health_status(target: str) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=2
            )
        except grpc.RpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def wait_until_serving(
    target: str, timeout_s: float, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:] if log else []
            raise GamjeongError(f"The server exited with code {process.returncode} before serving: {' | '.join(tail)}")
        if _health_status(target) == "SERVING":
            return
        time.sleep(0.5)
    raise GamjeongError(f"The server at {target} did not report SERVING within {timeout_s:.0f} s; see its log.")


def serve_command(
    model_dir: Path, config: ServerBenchConfig, port: int, metrics_port: int, http_port: int | None = None
) -> list[str]:
    """The `gamjeong serve` command line of a started server: the benchmark's server flags, each only when given."""
    command = [
        sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(model_dir), "--backend", config.backend,
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
        "--log-format", "text", "--log-level", "warning",
    ]  # fmt: skip
    if config.threads:
        command += ["--intra-op-threads", str(config.threads)]
    if config.max_batch_size:
        command += ["--max-batch-size", str(config.max_batch_size)]
    if config.max_wait_ms is not None:
        command += ["--max-wait-ms", str(config.max_wait_ms)]
    if config.grouping is not None:
        command += ["--grouping", config.grouping]
    if config.intra_op_spinning is not None:
        command += ["--intra-op-spinning" if config.intra_op_spinning else "--no-intra-op-spinning"]
    if http_port is not None:
        command += ["--http-port", str(http_port)]
    if config.server_workers is not None:  # only when asked: servers without --workers still start
        command += ["--workers", str(config.server_workers)]
    return command


@contextlib.contextmanager
def started_server(
    model_dir: Path, config: ServerBenchConfig, log: Path, http_port: int | None = None
) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """`gamjeong serve` in a subprocess on free ports (and `--http-port http_port` if given); yields (target,
    metrics address, the process); SIGTERM on exit."""
    port, metrics_port = free_port(), free_port()
    command = serve_command(model_dir, config, port, metrics_port, http_port)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    target = f"127.0.0.1:{port}"
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_serving(target, config.startup_timeout_s, process, log)
            yield target, f"127.0.0.1:{metrics_port}", process
        finally:
            stop_process(process)


@contextlib.contextmanager
def started_echo_server(processes: int, log: Path, timeout_s: float) -> Iterator[tuple[str, subprocess.Popen]]:
    """benchmarks/echo_server.py in `processes` processes on a free port; yields (target, the parent process)."""
    port = free_port()
    command = [sys.executable, "-m", "gamjeong.benchmarks.echo_server", "--port", str(port)]
    command += ["--processes", str(processes)]
    target = f"127.0.0.1:{port}"
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(target, timeout_s, process, log)
            yield target, process
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s: a benchmarked server gets its graceful shutdown, but never hangs the run."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- metrics ---------------------------------------------------------------------------------------------------------


def scrape_batch_sizes(metrics: str | None) -> dict[str, float] | None:
    """Cumulative `gamjeong_batch_size` histogram buckets ({le: count}) plus `_count` and `_sum`; None if unreachable."""
    if not metrics:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8")
    except OSError:
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("process_cpu_seconds", "process_cpu_seconds_total"):  # the server's user + system CPU
            values["_cpu_s"] = sum(s.value for s in family.samples)
        if family.name in ("gamjeong_batch_real_tokens", "gamjeong_batch_padded_tokens"):
            values |= {f"_{family.name}": s.value for s in family.samples if s.name.endswith("_sum")}
        if family.name != "gamjeong_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                values[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                values["_count"] = sample.value
            elif sample.name.endswith("_sum"):
                values["_sum"] = sample.value
    return values or None


def batch_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    calls = delta.get("_count", 0.0)
    buckets: dict[str, int] = {}
    previous, lower = 0.0, 1
    for le in sorted((k for k in delta if not k.startswith("_")), key=lambda k: float(k)):
        upper = float(le)
        name = (
            f"{lower}+" if upper == float("inf") else (f"{int(upper)}" if lower >= upper else f"{lower}-{int(upper)}")
        )
        buckets[name] = int(delta[le] - previous)  # cumulative counts -> texts-per-call range
        previous = delta[le]
        lower = int(upper) + 1 if upper != float("inf") else lower
    real, padded = delta.pop("_gamjeong_batch_real_tokens", 0.0), delta.pop("_gamjeong_batch_padded_tokens", 0.0)
    cpu_s = delta.pop("_cpu_s", None)
    return {
        "model_calls": int(calls),
        "real_tokens": int(real),
        "server_cpu_s": None if cpu_s is None else round(cpu_s, 3),
        # Padded tokens the model computed per real token (1.0: no padding), over the whole run.
        "padding_ratio": round(padded / real, 3) if real else None,
        "mean_batch_size": round(delta.get("_sum", 0.0) / calls, 2) if calls else None,
        "batch_size_buckets": {k: v for k, v in buckets.items() if v},
    }
