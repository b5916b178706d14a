"""Prometheus metrics of one server, on their own registry (so several servers can live in one test process)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Requests by method and status code, latencies, batch sizes, queue depth and texts classified."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gamjeong_requests",
            "Finished RPCs by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "gamjeong_request_latency_seconds",
            "Wall time of an RPC from arrival to its last message, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "gamjeong_batch_size",
            "Texts per model call made by the dynamic batcher.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "gamjeong_batch_padded_tokens",
            "Padded tokens (texts x longest text) per model call.",
            buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536),
            registry=self.registry,
        )
        # Real (unpadded) tokens per call: padded_tokens_sum / real_tokens_sum is the padding overhead of the
        # batcher's grouping (1.0: no padding at all).
        self.batch_real_tokens = Histogram(
            "gamjeong_batch_real_tokens",
            "Real tokens (sum of the texts' own lengths, no padding) per model call.",
            buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536),
            registry=self.registry,
        )
        # The cost line the batcher splits by (measured at start-up, or given): 0 with --grouping fill.
        self.call_cost = Gauge(
            "gamjeong_batch_call_cost_seconds",
            "The grouping cost model: fixed seconds per model call (part=call) and per padded token (part=token).",
            ["part"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.inference_latency = Histogram(
            "gamjeong_inference_seconds",
            "Wall time of one model call (padding + forward + softmax).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "gamjeong_queue_seconds",
            "Time a text waited in the batcher's queue before its model call started.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gamjeong_queue_depth",
            "Texts waiting in the batcher's queue.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.texts_classified = Counter(
            "gamjeong_texts_classified",
            "Texts run through the model.",
            registry=self.registry,
        )
        self.texts_dropped = Counter(
            "gamjeong_texts_dropped",
            "Queued texts dropped before the model ran them, by reason (cancelled, deadline).",
            ["reason"],
            registry=self.registry,
        )
        # The result cache (server/cache.py, --cache-size): lookups by result, and how full it is.
        self.cache_lookups = Counter(
            "gamjeong_cache_lookups",
            "Result-cache lookups by result (hit: answered without queueing; miss: went to the model).",
            ["result"],
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "gamjeong_cache_evictions",
            "Result-cache entries dropped to make room (least recently used first).",
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "gamjeong_cache_entries",
            "Entries in the result cache.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.cache_capacity = Gauge(
            "gamjeong_cache_capacity",
            "Most entries the result cache holds (0: off).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.model_instances = Gauge(
            "gamjeong_model_instances",
            "Model instances (inference sessions) fed by the batcher.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # Which model answers (a reload changes it): one series at 1, labelled with the served model's version.
        self.model_info = Gauge(
            "gamjeong_model_info",
            "The model serving now (1), by its version (ModelInfo.model_version) and export time.",
            ["model_version", "exported_at"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # process_cpu_seconds_total, resident memory, open fds: CPU per request, and idle cores that should be idle,
        # are visible in production (and `gamjeong bench server` reads the CPU time the server used under each load).
        ProcessCollector(registry=self.registry)
        self._http_server = None

    def set_model(self, model_version: str, exported_at: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_version=model_version, exported_at=exported_at).set(1)

    def serve_http(self, host: str, port: int, token: str | None = None) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the port it listens on (see serve_registry)."""
        self._http_server = serve_registry(self.registry, host, port, token)
        return int(self._http_server.server_address[1])

    def stop_http(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when it has none yet); for tests and logs."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def serve_registry(registry: CollectorRegistry, host: str, port: int, token: str | None = None) -> Any:
    """Serve a registry at /metrics in a daemon thread; returns the WSGI server (`shutdown()`, `server_close()`).

    With a token, a scrape must carry `Authorization: Bearer <token>` (Prometheus: `authorization: {credentials:
    ...}` in the scrape config); without one, 401.
    """
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # "[::]" is gRPC's spelling
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    app = make_wsgi_app(registry)
    server = make_server(address, port, app if token is None else _guarded(app, token), server_class, _QuietHandler)
    # A short poll interval: shutdown() waits for the serving loop to notice, and that is part of the grace period.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    log.info(
        "metrics endpoint listening", extra={"host": address, "port": server.server_address[1], "auth": bool(token)}
    )
    return server


class ProcessTreeCollector:
    """process_cpu_seconds_total and process_resident_memory_bytes summed over several processes (the supervisor,
    engine and front ends of `--workers`), read from /proc as prometheus_client's ProcessCollector reads one process.
    A process that exits takes its CPU seconds with it: the counter can go down when a worker is restarted."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        cpu = rss = 0.0
        for pid in self._pids():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
                    resident = int(statm.read().split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile, or not Linux
                continue
            cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime and stime
            rss += resident * page
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU seconds of the server's processes.", value=cpu
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the server's processes, in bytes.", value=rss
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr with access lines that are not JSON."""


def _guarded(app: Callable[..., Iterable[bytes]], token: str) -> Callable[..., Iterable[bytes]]:
    from gamjeong.server.auth import bearer_problem

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # wsgiref joins repeated headers with ",", which then fails the check: two headers are refused as in gRPC.
        given = environ.get("HTTP_AUTHORIZATION")
        if bearer_problem([given] if given is not None else [], token) is None:
            return app(environ, start_response)
        start_response(
            "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')]
        )
        return [b"This endpoint needs 'Authorization: Bearer <token>' (the server's --auth-token).\n"]

    return guarded
