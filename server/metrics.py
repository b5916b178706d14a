"""Prometheus metrics of one server, on their own registry (so several servers can live in one test process)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self._http_server = None

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the port it listens on."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http_server = server
        bound = int(server.server_address[1])
        log.info("metrics endpoint listening", extra={"host": host, "port": bound})
        return bound

    def stop_http(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when it has none yet); for tests and logs."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0
