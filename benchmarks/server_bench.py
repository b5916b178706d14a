"""`gamjeong bench server`: the gRPC server end to end, against the raw predictor on the same texts.

Closed-loop load: at concurrency C, C clients each send a request, wait for its answer and send the next, for a fixed
time, over one channel. Three gRPC modes: `unary` (Classify, one short message per call), `stream` (ClassifyStream, a
bulk list per call) and `chat` (ClassifyChat: each client keeps one bidirectional stream open and sends its next message
when the previous reply has arrived); and `http` (POST /v1/classify on the same server's --http-port, one short
message per call, one keep-alive HTTP/1.1 connection per client, JSON encoded and parsed), to compare with `unary`:
the HTTP transport's cost over gRPC's. The server's `gamjeong_batch_size` histogram is read from its metrics endpoint
before and after each run, so the batches the dynamic batcher actually made are reported beside the latencies.

Before the server is started (so the two do not compete for the CPU), the raw predictor from the same directory
measures one text per call and the best grouping of the same texts (windows as deep as the highest concurrency, sorted
and split by the cost model): the server's overhead at concurrency 1 and its throughput at the highest concurrency are
given as ratios to those. Texts default to the shipped GoEmotions-Korean subset: real, heavy-tailed lengths.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from gamjeong.errors import GamjeongError
from gamjeong.server.settings import ServerSettings

from .environment import environment
from .gpu_monitor import GpuSampler
from .grouped import grouping_comparison
from .load import ERROR_BACKOFF_S
from .load_processes import LoadGenerator, ProcessTreeCpu
from .model_bench import default_cache_dir
from .paired import paired_overhead, paired_throughput
from .server_process import (
    batch_delta,
    free_port,
    scrape_batch_sizes,
    started_echo_server,
    started_server,
    wait_until_serving,
)
from .texts import load_texts

Mode = Literal["unary", "stream", "chat", "http"]
MODES: tuple[str, ...] = ("unary", "stream", "chat", "http")
# What runs when --modes is not given (docs/benchmarks.md's tables): the gRPC modes; `http` is asked for by name.
DEFAULT_MODES: tuple[str, ...] = ("unary", "stream", "chat")
# `gamjeong serve`'s --intra-op-spinning default, which the raw predictor then uses too.
SERVER_SPINNING_DEFAULT: bool = ServerSettings.model_fields["intra_op_spinning"].default


class ServerBenchConfig(BaseModel):
    """Settings of one `gamjeong bench server` run."""

    target: str | None = Field(None, description="HOST:PORT of a running server (else --model starts one).")
    metrics: str | None = Field(None, description="HOST:PORT of a running server's metrics endpoint.")
    http: str | None = Field(None, description="HOST:PORT of a running server's --http-port (the http mode).")
    model: list[Path] = Field(default_factory=list, description="Model directories: servers to start, one at a time.")
    backend: Literal["auto", "pytorch", "onnx"] = "auto"
    concurrencies: list[int] = Field(default_factory=lambda: [1, 16, 64])
    modes: list[str] = Field(default_factory=lambda: list(DEFAULT_MODES))
    duration_s: float = Field(10.0, gt=0, description="Timed seconds per (mode, concurrency).")
    warmup_s: float = Field(1.0, ge=0)
    stream_texts: int = Field(32, ge=1, description="Texts per ClassifyStream call.")
    data: Path | None = None
    output: Path = Path("bench-results/server")
    threads: int | None = Field(None, ge=1, description="Intra-op threads for the started server and the raw run.")
    max_batch_size: int | None = Field(None, ge=1, description="--max-batch-size of the started server.")
    max_wait_ms: float | None = Field(None, ge=0, description="--max-wait-ms of the started server.")
    grouping: Literal["cost", "fill"] | None = Field(None, description="--grouping of the started server.")
    intra_op_spinning: bool | None = Field(None, description="--(no-)intra-op-spinning of the started server.")
    startup_timeout_s: float = Field(300.0, gt=0)
    quick: bool = False
    client_processes: int = Field(1, ge=1, description="Processes the clients are spread over (1: this one).")
    channels: int = Field(1, ge=1, description="gRPC channels per client process, the clients spread over them.")
    server_workers: int | None = Field(None, ge=1, description="--workers of the started server (when given).")
    echo: bool = Field(False, description="Drive echo processes that run no model: the load generator alone.")

    @field_validator("concurrencies")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(values))

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, values: list[str]) -> list[str]:
        for mode in values:
            if mode not in MODES:
                raise ValueError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
        return list(dict.fromkeys(values))


def quick_settings(config: ServerBenchConfig, explicit: set[str]) -> ServerBenchConfig:
    if not config.quick:
        return config
    updates: dict[str, Any] = {"stream_texts": min(config.stream_texts, 16), "warmup_s": min(config.warmup_s, 0.3)}
    if "concurrencies" not in explicit:
        updates["concurrencies"] = [1, 4]
    if "duration_s" not in explicit:
        updates["duration_s"] = 1.0
    return config.model_copy(update=updates)


# --- percentiles -----------------------------------------------------------------------------------------------------


def _latency_summary(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    values = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(values.mean()), 3),
    }


# --- the raw predictor on the same texts -----------------------------------------------------------------------------


def raw_predictor(model_dir: Path, config: ServerBenchConfig):
    """The predictor the started server would load, in this process: the same backend, threads and spinning (the
    server's default when not given), so the two compare like for like."""
    from gamjeong.predictor import load_predictor

    spinning = SERVER_SPINNING_DEFAULT if config.intra_op_spinning is None else config.intra_op_spinning
    return load_predictor(
        model_dir,
        backend=config.backend,  # type: ignore[arg-type]
        intra_op_threads=config.threads,
        intra_op_spinning=spinning,
    )


def measure_raw(
    model_dir: Path, config: ServerBenchConfig, texts: list[str], batch_size: int, seconds: float, window: int = 64
) -> dict[str, Any]:
    """The predictor the server would load, on the same texts: one text per call (latency), and the best grouping
    (throughput): windows of `window` texts (the deepest queue the server sees) sorted and split by the cost model
    measured on this model here; beside it, the whole set sorted in batches of `batch_size` (the most a batcher could
    gain, with every text known in advance), arrival-order batches and one text per call (benchmarks/grouped.py)."""
    predictor = raw_predictor(model_dir, config)
    for text in texts[:3]:
        predictor.predict_encoded(predictor.encode([text]))
    single: list[float] = []
    started = time.perf_counter()
    for i in range(100_000):
        t0 = time.perf_counter()
        predictor.predict_encoded(predictor.encode([texts[i % len(texts)]]))
        single.append(time.perf_counter() - t0)
        if time.perf_counter() - started > seconds and i >= 9:
            break
    result = {"backend": predictor.backend, "single_text": {"calls": len(single)} | _latency_summary(single)}
    result |= grouping_comparison(predictor, texts, batch_size, seconds, window)
    del predictor
    gc.collect()
    return result


# --- closed-loop load -----------------------------------------------------------------------------------------------


def measure_server(
    target: str,
    metrics: str | None,
    config: ServerBenchConfig,
    texts: list[str],
    progress: Callable[[str], None],
    http: str | None = None,
    server_pid: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every (mode, concurrency) against one server. `server_pid` (a server this benchmark started): its whole process
    tree's CPU is measured; else the CPU comes from its metrics (`process_cpu_seconds_total`), when it has any."""
    from gamjeong.clients import EmotionClient

    with EmotionClient(target) as client:
        info = client.model_info()
    server = {
        "backend": info.backend,
        "execution_provider": info.execution_provider,
        "quantization": info.quantization,
        "model_name": info.model_name,
        "max_input_length": info.max_input_length,
        "limits": {k: v for k, v in info.limits.items() if isinstance(v, (int, float, str))},
    }
    tree = ProcessTreeCpu(server_pid) if server_pid is not None else None
    if tree is not None:
        server["processes"] = tree.processes()
    rows: list[dict[str, Any]] = []
    generator = LoadGenerator(
        target,
        texts,
        stream_texts=config.stream_texts,
        http=http,
        processes=config.client_processes,
        channels=config.channels,
    )
    with generator:
        for mode in config.modes:
            for concurrency in config.concurrencies:
                progress(f"{info.backend}: {mode} at concurrency {concurrency} for {config.duration_s:g} s")
                if config.warmup_s:
                    generator.run(mode, concurrency, config.warmup_s)
                before, cpu_before = scrape_batch_sizes(metrics), tree.seconds() if tree else None
                with GpuSampler() as gpu:
                    load = generator.run(mode, concurrency, config.duration_s)
                after, cpu_after = scrape_batch_sizes(metrics), tree.seconds() if tree else None
                rows.append(_row(info.backend, mode, concurrency, load, batch_delta(before, after), gpu.summary()))
                if cpu_before is not None and cpu_after is not None:
                    # the whole process tree (every worker), not only the process that serves /metrics
                    rows[-1] |= {"server_cores": round((cpu_after - cpu_before) / load["elapsed"], 2)}
                    rows[-1] |= {"server_cpu_source": "process tree"}
    return server, rows


def _row(
    backend: str,
    mode: str,
    concurrency: int,
    load: dict[str, Any],
    batches: dict[str, Any] | None,
    gpu: list[dict[str, Any]] | str,
) -> dict[str, Any]:
    elapsed = load["elapsed"]
    latencies = load["latencies"]
    return {
        "server": backend,
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(latencies),
        "texts": load["texts"],
        "errors": sum(load["errors"].values()),
        "error_codes": load["errors"],
        **_latency_summary(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "texts_per_s": round(load["texts"] / elapsed, 2),
        "batches": batches,
        # Real (unpadded) tokens the server's model calls ran, from its metrics: texts/s hides length.
        "tokens_per_s": round(batches["real_tokens"] / elapsed, 1) if batches else None,
        # Cores the server kept busy (CPU seconds per second): spinning threads show up here.
        "server_cores": round(batches["server_cpu_s"] / elapsed, 2)
        if batches and batches["server_cpu_s"] is not None
        else None,
        "server_cpu_source": "metrics" if batches and batches["server_cpu_s"] is not None else None,
        # Cores the load generator used (all its processes): near 1.0 per process, it is the bottleneck.
        "client_cores": round(load["client_cpu_s"] / elapsed, 2),
        "client_processes": len(load["per_process"]),
        "per_process": load["per_process"],
        "gpu": gpu,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _load_shape(config: ServerBenchConfig) -> str:
    channels = "one channel" if config.channels == 1 else f"{config.channels} channels"
    if config.client_processes == 1:
        return f"all clients share {channels} in one asyncio process"
    return (
        f"the clients are spread over {config.client_processes} processes (each its own asyncio loop and "
        f"{channels}), started together"
    )


def _ratios(rows: list[dict[str, Any]], raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Server cost against the raw predictor: latency at concurrency 1, throughput at the highest concurrency."""
    if raw is None:
        return None
    ratios: dict[str, Any] = {}
    raw_p50 = raw["single_text"]["p50_ms"]
    raw_tps = raw["grouped"]["texts_per_s"]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mode_rows = [r for r in rows if r["mode"] == mode]
        lowest = min(mode_rows, key=lambda r: r["concurrency"])
        highest = max(mode_rows, key=lambda r: r["concurrency"])
        entry: dict[str, Any] = {"highest_concurrency": highest["concurrency"]}
        if mode != "stream" and lowest["concurrency"] == 1 and lowest["p50_ms"] and raw_p50:
            entry["p50_overhead_ms_at_c1"] = round(lowest["p50_ms"] - raw_p50, 3)
            entry["p50_latency_ratio_at_c1"] = round(lowest["p50_ms"] / raw_p50, 3)
        if raw_tps:
            entry["throughput_ratio_at_highest"] = round(highest["texts_per_s"] / raw_tps, 3)
        ratios[mode] = entry
    return ratios


def http_overhead(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """HTTP/JSON against gRPC unary on the same server, per concurrency both modes ran: p50 and p99 latency
    differences (ms, positive: HTTP slower) and the throughput ratio."""
    unary = {r["concurrency"]: r for r in rows if r["mode"] == "unary"}
    http = {r["concurrency"]: r for r in rows if r["mode"] == "http"}
    overhead: dict[str, Any] = {}
    for concurrency in sorted(set(unary) & set(http)):
        u, h = unary[concurrency], http[concurrency]
        if not (u["p50_ms"] and h["p50_ms"] and u["texts_per_s"]):
            continue
        overhead[str(concurrency)] = {
            "grpc_p50_ms": u["p50_ms"],
            "http_p50_ms": h["p50_ms"],
            "p50_overhead_ms": round(h["p50_ms"] - u["p50_ms"], 3),
            "p99_overhead_ms": round(h["p99_ms"] - u["p99_ms"], 3),
            "throughput_ratio": round(h["texts_per_s"] / u["texts_per_s"], 3),
        }
    return overhead or None


def _measure_echo(
    config: ServerBenchConfig, texts: list[str], progress: Callable[[str], None], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The load generator alone: against echo processes that run no model (benchmarks/echo_server.py)."""
    processes = config.server_workers or 1
    progress(f"starting {processes} echo server process(es): no model, the load generator's own ceiling")
    with started_echo_server(processes, config.output / "server-echo.log", config.startup_timeout_s) as (
        target,
        process,
    ):
        server, server_rows = measure_server(target, None, config, texts, progress, server_pid=process.pid)
    rows += server_rows
    return server | {
        "started_by_benchmark": True,
        "echo_processes": processes,
        "raw": None,
        "ratios": None,
        "raw_note": "an echo server runs no model",
    }


def run_server_benchmark(
    config: ServerBenchConfig, *, progress: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    if config.target is not None and "http" in config.modes and config.http is None:
        raise GamjeongError("The http mode with --target needs --http HOST:PORT (the server's --http-port).")
    if config.target is not None and len(config.model) > 1:
        raise GamjeongError(
            "With --target, give at most one --model (the directory that server serves, for the raw run)."
        )
    if config.echo and (config.target is not None or config.model or "http" in config.modes):
        raise GamjeongError("--echo starts its own gRPC server: give neither --target, --model nor the http mode.")
    for path in config.model:
        if not Path(path).expanduser().is_dir():
            raise GamjeongError(f"Model directory '{path}' does not exist.")
    started_environment = environment(config.threads)  # date and load average at the start of the run
    source = load_texts(config.data)
    texts = source.texts
    random_weights = config.target is None and not config.model and not config.echo
    if random_weights:
        # No server and no model given: the real-size random-weight model of `bench model`, as PyTorch fp32 and as
        # ONNX int8 (built and exported into the cache once), so PyTorch and ONNX are compared end to end.
        from .random_models import random_real_size_export, random_real_size_model

        cache = default_cache_dir()
        trained, _ = random_real_size_model(cache, texts, None, progress)
        int8 = random_real_size_export(cache, texts, None, "int8", progress)
        config = config.model_copy(update={"model": [trained, int8]})
    config.output.mkdir(parents=True, exist_ok=True)
    batch_size = config.max_batch_size or 32  # the server's default --max-batch-size
    raw_seconds = max(0.5, min(config.duration_s, 10.0))
    servers: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    runs = [(config.target, Path(p).expanduser() if p else None) for p in (config.model or [None])]
    if config.echo:
        servers.append(_measure_echo(config, texts, progress, rows))
        runs = []
    for target, model_dir in runs:
        raw = None
        if model_dir is not None:
            progress(f"raw predictor on {model_dir.name}: one text per call, then the best grouping of the texts")
            window = max(config.concurrencies)
            raw = measure_raw(model_dir, config, texts, batch_size, raw_seconds, window)
        if target is None:
            assert model_dir is not None
            progress(f"starting `gamjeong serve --model {model_dir}`")
            log = config.output / f"server-{model_dir.name}.log"
            http_port = free_port() if "http" in config.modes else None
            with started_server(model_dir, config, log, http_port) as (started_target, metrics, process):
                http = None if http_port is None else f"127.0.0.1:{http_port}"
                server, server_rows = measure_server(
                    started_target, metrics, config, texts, progress, http, server_pid=process.pid
                )
                if "unary" in config.modes:
                    progress("paired with the raw predictor: one client, then the highest concurrency")
                    predictor = raw_predictor(model_dir, config)
                    if 1 in config.concurrencies:
                        server["paired_c1"] = paired_overhead(predictor, started_target, texts, raw_seconds)
                    server["paired_throughput"] = paired_throughput(
                        predictor, started_target, texts, max(config.concurrencies), batch_size, raw_seconds / 2
                    )
                    del predictor
                    gc.collect()
            server["started_by_benchmark"] = True
        else:
            wait_until_serving(target, config.startup_timeout_s)
            server, server_rows = measure_server(target, config.metrics, config, texts, progress, config.http)
            server["target"] = target
        ratios = _ratios(server_rows, raw)
        if ratios and "unary" in ratios:
            if "paired_c1" in server:
                ratios["unary"]["p50_overhead_ms_at_c1_paired"] = server["paired_c1"]["overhead_p50_ms"]
            if "paired_throughput" in server:
                ratios["unary"]["throughput_ratio_at_highest_paired"] = server["paired_throughput"]["ratio"]
        server |= {"model_dir": str(model_dir) if model_dir else None, "raw": raw, "ratios": ratios}
        if "http" in config.modes:
            server["http_vs_grpc_unary"] = http_overhead(server_rows)
        if raw is None:
            server["raw_note"] = "no --model given for the target, so the raw predictor was not measured"
        servers.append(server)
        rows += server_rows
    return {
        "kind": "server",
        "random_weights": random_weights,
        "note": "random weights: timing only" if random_weights else None,
        "texts": source.description,
        "settings": {
            "concurrencies": config.concurrencies,
            "modes": config.modes,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "stream_texts": config.stream_texts,
            "raw_batch_size": batch_size,
            "load": "closed loop: each client sends its next request when the previous answer is back (or "
            f"{ERROR_BACKOFF_S:g} s after an error); " + _load_shape(config) + " on the same machine as the server",
            "latency": "unary: one text per call; stream: a whole ClassifyStream call of stream_texts texts; "
            "chat: one message to its reply on an open ClassifyChat stream; http: one text per POST /v1/classify",
        },
        "environment": started_environment,
        "servers": servers,
        "rows": rows,
    }
