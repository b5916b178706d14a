"""The one settings object of `gamjeong serve`: command-line flags override GAMJEONG_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gamjeong.choices import EventLoop
from gamjeong.errors import GamjeongError, flag_error

TruncationPolicy = Literal["truncate", "refuse"]
Backend = Literal["auto", "pytorch", "onnx"]


class ServerSettings(BaseSettings):
    """Everything the server can be told. Each field is also read from GAMJEONG_<FIELD> (e.g. GAMJEONG_PORT=50051)."""

    model_config = SettingsConfigDict(env_prefix="GAMJEONG_", extra="forbid")

    model: Path = Field(description="Model directory: an exported one (ONNX) or a trained one (PyTorch).")
    backend: Backend = Field("auto", description="auto: ONNX for an exported directory, PyTorch for a trained one.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="CUDA when available (auto), or force one.")
    host: str = Field("[::]", description="Address to listen on.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: pick a free one).")
    metrics_port: int = Field(9464, ge=-1, le=65535, description="Prometheus HTTP port (0: pick a free one, -1: off).")
    metrics_host: str | None = Field(
        None, description="Address the metrics endpoint listens on (default: --host; it needs the token under auth)."
    )
    # HTTP/JSON + WebSocket + web page beside gRPC (gamjeong.server.http), on the same host, batcher, limits and auth.
    http_port: int | None = Field(
        None, ge=0, le=65535, description="HTTP/JSON and WebSocket port (0: free; unset: off)."
    )
    cors_origin: str | None = Field(None, description="Comma-separated origins allowed to call the HTTP API (CORS).")

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most texts in one model call.")
    max_batch_tokens: int = Field(8192, ge=1, description="Most padded tokens (texts x longest) in one model call.")
    # 0 by default: a request reaching an idle model runs at once (measured: 5 ms of waiting added 5 ms to the p50 of
    # a lone request); under load, texts pile up while the model runs and form the next batch anyway.
    max_wait_ms: float = Field(0.0, ge=0, le=10_000, description="How long a non-full batch waits for more texts.")
    # How the batcher splits the texts it took into model calls (server/grouping.py). "cost": sorted by length, cut
    # wherever the padding saved is worth more than one more call, by this model's measured cost line; "fill": the
    # earlier split, up to max_batch_size texts in arrival order, cut only when full.
    grouping: Literal["cost", "fill"] = Field("cost", description="Split waiting texts by a cost model, or fill.")
    call_cost_ms: float | None = Field(
        None, ge=0, description="Fixed ms of one model call for --grouping cost (default: measured at start-up)."
    )
    token_cost_us: float | None = Field(
        None, ge=0, description="µs per padded token for --grouping cost (default: measured at start-up)."
    )
    sort_window: int = Field(
        128, ge=1, le=4096, description="Most waiting texts sorted together and split by --grouping cost."
    )
    max_texts_per_request: int = Field(64, ge=1, description="Most texts in one Classify request.")
    max_stream_texts: int = Field(100_000, ge=1, description="Most texts in one ClassifyStream request.")
    max_queue_size: int = Field(1024, ge=1, description="Most texts waiting for the model; beyond: RESOURCE_EXHAUSTED.")
    max_text_chars: int = Field(10_000, ge=1, description="Most characters in one text (INVALID_ARGUMENT beyond).")
    max_length: int | None = Field(None, ge=2, description="Max input tokens (default: the tokenizer's, <= 512).")
    truncation: TruncationPolicy = Field("truncate", description="Default for texts over the token limit.")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest gRPC message in or out.")
    # Client-side load balancing (round_robin over a headless Service) finds new pods only when a client re-resolves
    # the name, which gRPC does when a connection ends: closing connections after a while (GOAWAY; calls in flight
    # get max_connection_age_grace_s to finish, then clients reconnect transparently) lets scale-ups take load.
    max_connection_age_s: float | None = Field(
        None, gt=0, description="Close each client connection after this many seconds (GOAWAY; unset: never)."
    )
    max_connection_age_grace_s: float = Field(
        30.0, ge=0, description="Time calls in flight keep on a connection closed by max_connection_age_s."
    )
    grace_s: float = Field(10.0, ge=0, description="Seconds from SIGTERM/SIGINT to exit, the drain included.")
    # Load balancers and Kubernetes readiness probes poll every few seconds: the drain gives them time to see
    # NOT_SERVING and move traffic away while the server still answers.
    drain_s: float = Field(
        3.0, ge=0, description="Seconds of NOT_SERVING while still serving, before new calls are refused (<= grace)."
    )
    intra_op_threads: int | None = Field(
        None, ge=1, description="Threads per model instance (default: the CPUs shared out, or the runtime's)."
    )
    # On: the intra-op threads spin between the operators of a call and stop when it ends (gamjeong.onnx_runtime), so
    # one text takes ~4.5 instead of ~6 ms on 2 cores and an idle or slow-fed server burns no core. Off for cores
    # shared with other work or under a CPU quota (the Kubernetes manifests): there a spinning thread takes the CPU
    # the others need (measured 1.7x slower at 64 clients with another job holding a core; docs/benchmarks.md).
    intra_op_spinning: bool = Field(
        True,
        description="ONNX Runtime's threads spin-wait while a call runs (off: for shared or CPU-limited cores).",
    )
    event_loop: EventLoop = Field(EventLoop.auto, description="auto: uvloop where installed, else asyncio's loop.")
    # Triton-style instance groups: N sessions, one batch each at a time, fed by the one batcher; 0 picks the layout
    # (server/layout.py): one single-thread instance per CPU for ONNX on a CPU (up to 4), one elsewhere.
    instances: int = Field(
        0, ge=0, le=64, description="Model instances (inference sessions) fed by the one batcher (0: auto)."
    )
    # Request handling in N processes (tokenising, gRPC, HTTP) sharing the ports and feeding one engine process that
    # holds the model and the one batcher (server/workers.py): what keeps a GPU fed. 0: N on CUDA, 1 (one process,
    # everything in it, as before) on a CPU, where the cores are better spent on the model.
    workers: int = Field(
        0, ge=0, le=64, description="Front-end processes sharing the ports and feeding one model process (0: auto)."
    )
    # A deployment rolls a model by pointing the model path (a symlink) at a new export: polling a stat every few
    # seconds costs nothing and works on every volume type, where inotify misses symlink swaps in mounted volumes.
    reload_watch_s: float = Field(
        2.0, ge=0, description="Seconds between checks of the model path for a new model to reload (0: never)."
    )
    # One more session with a thread per core, for a batch that would run alone on an idle server: the latency of
    # one multi-thread session at low load, the throughput of single-thread instances under load (server/layout.py).
    solo: bool = Field(True, description="Keep a session with all cores' threads for lone batches on an idle server.")
    # Off by default: a benchmark or a workload without repeats gains nothing from it, and turning it on is a choice
    # an operator makes for a chat feed (deploy/k8s sets 10000: a few MB).
    cache_size: int = Field(
        0, ge=0, le=10_000_000, description="Entries in the LRU of results for repeated texts (0: off)."
    )

    # OpenTelemetry traces of every call over OTLP/gRPC (server/tracing.py); where to: the standard OTEL_* variables.
    otel: bool | None = Field(
        None, description="Export OpenTelemetry traces over OTLP/gRPC (unset: on when OTEL_* variables ask for it)."
    )

    tls_cert: Path | None = Field(None, description="PEM server certificate (with --tls-key: serve TLS).")
    tls_key: Path | None = Field(None, description="PEM private key of the server certificate.")
    tls_client_ca: Path | None = Field(None, description="PEM CA that client certificates must chain to (mutual TLS).")
    auth_token: str | None = Field(None, description="Bearer token every call must carry (health checks excepted).")

    log_format: Literal["json", "text"] = Field("json", description="Structured JSON log lines, or plain text.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        if self.max_texts_per_request > self.max_queue_size:
            raise ValueError(
                f"max_texts_per_request ({self.max_texts_per_request}) cannot exceed max_queue_size "
                f"({self.max_queue_size}), or a full-size request could never be queued"
            )
        if self.max_batch_size > self.max_queue_size:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) cannot exceed max_queue_size ({self.max_queue_size}), "
                "or a ClassifyStream chunk could never be queued"
            )
        if (self.call_cost_ms is None) != (self.token_cost_us is None):
            raise ValueError("give both --call-cost-ms and --token-cost-us, or neither (then both are measured)")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("the auth token is empty; leave it unset to turn auth off")
        if self.auth_token is not None and not (self.auth_token.isascii() and self.auth_token.isprintable()):
            raise ValueError("the auth token must be printable ASCII (it travels in an HTTP/2 header)")
        return self

    @property
    def metrics_address(self) -> str:
        return self.host if self.metrics_host is None else self.metrics_host

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    def read_tls_files(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate, key, client CA or None) read from disk, with one clear error for a missing file."""
        assert self.tls_cert is not None and self.tls_key is not None
        contents = []
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is None:
                contents.append(None)
                continue
            try:
                contents.append(Path(path).expanduser().read_bytes())
            except OSError as exc:
                raise GamjeongError(f"Cannot read TLS file '{path}' ({exc.strerror}); check the path.") from exc
        return contents[0], contents[1], contents[2]  # type: ignore[return-value]


def load_settings(**overrides: object) -> ServerSettings:
    """Settings from the environment with the given (flag) values on top; None means "not given"."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ServerSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise flag_error(exc, given, hint="Fix the flag or its GAMJEONG_* variable.") from None
