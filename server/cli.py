"""`gamjeong serve`: the gRPC server. Every flag can also be set as a GAMJEONG_* environment variable."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: Path = typer.Option(
        None, "--model", "-m", help="Exported (ONNX) or trained model directory. [GAMJEONG_MODEL]"
    ),
    backend: str = typer.Option(
        None, help="auto | pytorch | onnx (auto: ONNX for an exported dir). [GAMJEONG_BACKEND]"
    ),
    device: str = typer.Option(None, help="auto | cpu | cuda. [GAMJEONG_DEVICE]"),
    host: str = typer.Option(None, help="Listen address (default [::]). [GAMJEONG_HOST]"),
    port: int = typer.Option(None, help="gRPC port (default 50051; 0 picks a free one). [GAMJEONG_PORT]"),
    metrics_port: int = typer.Option(None, help="Prometheus port (default 9464; -1 off). [GAMJEONG_METRICS_PORT]"),
    metrics_host: str = typer.Option(None, help="Prometheus listen address (default: --host). [GAMJEONG_METRICS_HOST]"),
    http_port: int = typer.Option(
        None, help="HTTP/JSON + WebSocket + web page port (off unless given; 0 picks a free one). [GAMJEONG_HTTP_PORT]"
    ),
    cors_origin: str = typer.Option(
        None, help="Comma-separated origins allowed to call the HTTP API from a browser (CORS; off by default)."
    ),
    max_batch_size: int = typer.Option(None, help="Most texts per model call (default 32)."),
    max_batch_tokens: int = typer.Option(None, help="Most padded tokens per model call (default 8192)."),
    max_wait_ms: float = typer.Option(
        None, help="Wait this long for more texts before running a partial batch (default 0)."
    ),
    max_texts_per_request: int = typer.Option(None, help="Most texts per Classify call (default 64)."),
    max_stream_texts: int = typer.Option(None, help="Most texts per ClassifyStream call (default 100000)."),
    max_queue_size: int = typer.Option(None, help="Most queued texts before RESOURCE_EXHAUSTED (default 1024)."),
    max_text_chars: int = typer.Option(None, help="Most characters per text (default 10000)."),
    max_length: int = typer.Option(None, help="Max input tokens (default: the tokenizer's, at most 512)."),
    truncation: str = typer.Option(None, help="Default for over-long texts: truncate | refuse."),
    max_message_bytes: int = typer.Option(None, help="Largest gRPC message (default 16 MiB)."),
    max_connection_age_s: float = typer.Option(
        None, help="Close client connections after this long (GOAWAY), so load-balancing clients re-resolve."
    ),
    max_connection_age_grace_s: float = typer.Option(
        None, help="Time calls in flight keep on a connection closed by --max-connection-age-s (default 30)."
    ),
    grace_s: float = typer.Option(None, help="Seconds from SIGTERM/SIGINT to exit, drain included (default 10)."),
    drain_s: float = typer.Option(
        None, help="Seconds health says NOT_SERVING while calls are still served, on SIGTERM (default 3)."
    ),
    intra_op_threads: int = typer.Option(None, help="Threads per model call (default: the runtime's)."),
    instances: int = typer.Option(
        None, help="Model instances (inference sessions, each with --intra-op-threads) fed by the batcher (default 1)."
    ),
    cache_size: int = typer.Option(
        None, help="Entries in the result cache for repeated texts, answered without queueing (default 0: off)."
    ),
    tls_cert: Path = typer.Option(None, help="PEM server certificate (serve TLS with --tls-key)."),
    tls_key: Path = typer.Option(None, help="PEM key of the server certificate."),
    tls_client_ca: Path = typer.Option(None, help="PEM CA for client certificates (mutual TLS)."),
    auth_token: str = typer.Option(
        None, help="Bearer token every call must carry; prefer the GAMJEONG_AUTH_TOKEN variable."
    ),
    log_format: str = typer.Option(None, help="json | text (default json)."),
    log_level: str = typer.Option(None, help="debug | info | warning | error (default info)."),
) -> None:
    """Serve a model over gRPC with dynamic batching, health, reflection and Prometheus metrics."""
    import asyncio

    from gamjeong.server.app import GamjeongServer
    from gamjeong.server.logs import structured_logging
    from gamjeong.server.settings import load_settings

    flags = dict(locals())
    settings = load_settings(**{k: v for k, v in flags.items() if k in _SETTING_NAMES})
    with structured_logging(settings.log_format, settings.log_level):
        asyncio.run(GamjeongServer(settings).serve_until_signalled())
    _exit_now()


def _exit_now() -> None:
    """End the process as soon as the server has stopped. The interpreter's own teardown (garbage-collecting the
    module graphs of transformers, tokenizers and onnxruntime) takes 1-3 s more, measured, which would put the exit past
    the grace period a supervisor such as Kubernetes allows; nothing is left to clean up by then."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Every parameter of `serve` is a ServerSettings field; values are validated there (one clear error for a bad one).
_SETTING_NAMES = frozenset(serve.__code__.co_varnames[: serve.__code__.co_argcount])
