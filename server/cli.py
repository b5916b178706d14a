"""`gamjeong serve`: the gRPC server. Every flag is a ServerSettings field (server/settings.py, where its description and
default are written) and can also be set as a GAMJEONG_* environment variable."""

from __future__ import annotations

from pathlib import Path

import typer

from gamjeong.choices import Device, EventLoop, LogFormat, LogLevel, Runtime, Truncation
from gamjeong.server.settings import ServerSettings


def _help(name: str) -> str:
    """A flag's help: its setting's description and default, written once on ServerSettings, and its variable."""
    field = ServerSettings.model_fields[name]
    default = field.default
    shown = "" if field.is_required() or default is None else f" Default: {getattr(default, 'value', default)}."
    return f"{field.description}{shown} [GAMJEONG_{name.upper()}]"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: Path = typer.Option(None, "--model", "-m", help=_help("model"), show_default=False),
    backend: Runtime = typer.Option(None, help=_help("backend"), show_default=False),
    device: Device = typer.Option(None, help=_help("device"), show_default=False),
    host: str = typer.Option(None, help=_help("host"), show_default=False),
    port: int = typer.Option(None, help=_help("port"), show_default=False),
    metrics_port: int = typer.Option(None, help=_help("metrics_port"), show_default=False),
    metrics_host: str = typer.Option(None, help=_help("metrics_host"), show_default=False),
    http_port: int = typer.Option(None, help=_help("http_port"), show_default=False),
    cors_origin: str = typer.Option(None, help=_help("cors_origin"), show_default=False),
    max_batch_size: int = typer.Option(None, help=_help("max_batch_size"), show_default=False),
    max_batch_tokens: int = typer.Option(None, help=_help("max_batch_tokens"), show_default=False),
    max_wait_ms: float = typer.Option(None, help=_help("max_wait_ms"), show_default=False),
    grouping: str = typer.Option(None, help=_help("grouping") + " [cost|fill]", show_default=False),
    call_cost_ms: float = typer.Option(None, help=_help("call_cost_ms"), show_default=False),
    token_cost_us: float = typer.Option(None, help=_help("token_cost_us"), show_default=False),
    sort_window: int = typer.Option(None, help=_help("sort_window"), show_default=False),
    max_texts_per_request: int = typer.Option(None, help=_help("max_texts_per_request"), show_default=False),
    max_stream_texts: int = typer.Option(None, help=_help("max_stream_texts"), show_default=False),
    max_queue_size: int = typer.Option(None, help=_help("max_queue_size"), show_default=False),
    max_text_chars: int = typer.Option(None, help=_help("max_text_chars"), show_default=False),
    max_length: int = typer.Option(None, help=_help("max_length"), show_default=False),
    truncation: Truncation = typer.Option(None, help=_help("truncation"), show_default=False),
    max_message_bytes: int = typer.Option(None, help=_help("max_message_bytes"), show_default=False),
    max_connection_age_s: float = typer.Option(None, help=_help("max_connection_age_s"), show_default=False),
    max_connection_age_grace_s: float = typer.Option(
        None, help=_help("max_connection_age_grace_s"), show_default=False
    ),
    grace_s: float = typer.Option(None, help=_help("grace_s"), show_default=False),
    drain_s: float = typer.Option(None, help=_help("drain_s"), show_default=False),
    intra_op_threads: int = typer.Option(None, help=_help("intra_op_threads"), show_default=False),
    intra_op_spinning: bool = typer.Option(
        None,
        "--intra-op-spinning/--no-intra-op-spinning",
        help="ONNX Runtime's threads spin-wait while a call runs, and stop when it ends (default on; "
        "--no-intra-op-spinning for cores shared with other work or under a CPU quota).",
    ),
    event_loop: EventLoop = typer.Option(None, help=_help("event_loop"), show_default=False),
    instances: int = typer.Option(None, help=_help("instances"), show_default=False),
    workers: int = typer.Option(None, help=_help("workers"), show_default=False),
    reload_watch_s: float = typer.Option(None, help=_help("reload_watch_s"), show_default=False),
    solo: bool = typer.Option(None, "--solo/--no-solo", help=_help("solo"), show_default=False),
    cache_size: int = typer.Option(None, help=_help("cache_size"), show_default=False),
    otel: bool = typer.Option(None, "--otel/--no-otel", help=_help("otel"), show_default=False),
    tls_cert: Path = typer.Option(None, help=_help("tls_cert"), show_default=False),
    tls_key: Path = typer.Option(None, help=_help("tls_key"), show_default=False),
    tls_client_ca: Path = typer.Option(None, help=_help("tls_client_ca"), show_default=False),
    auth_token: str = typer.Option(None, help=_help("auth_token"), show_default=False),
    log_format: LogFormat = typer.Option(None, help=_help("log_format"), show_default=False),
    log_level: LogLevel = typer.Option(None, help=_help("log_level"), show_default=False),
) -> None:
    """Serve a model over gRPC with dynamic batching, health, reflection and Prometheus metrics."""
    from gamjeong.server.app import GamjeongServer, run_event_loop
    from gamjeong.server.logs import structured_logging
    from gamjeong.server.settings import load_settings
    from gamjeong.server.workers import resolve_workers, serve_with_workers

    # A flag not given is None: the GAMJEONG_* variable, else the setting's default, applies.
    settings = load_settings(
        model=model,
        backend=backend,
        device=device,
        host=host,
        port=port,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        http_port=http_port,
        cors_origin=cors_origin,
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        grouping=grouping,
        call_cost_ms=call_cost_ms,
        token_cost_us=token_cost_us,
        sort_window=sort_window,
        max_texts_per_request=max_texts_per_request,
        max_stream_texts=max_stream_texts,
        max_queue_size=max_queue_size,
        max_text_chars=max_text_chars,
        max_length=max_length,
        truncation=truncation,
        max_message_bytes=max_message_bytes,
        max_connection_age_s=max_connection_age_s,
        max_connection_age_grace_s=max_connection_age_grace_s,
        grace_s=grace_s,
        drain_s=drain_s,
        intra_op_threads=intra_op_threads,
        intra_op_spinning=intra_op_spinning,
        event_loop=event_loop,
        instances=instances,
        workers=workers,
        reload_watch_s=reload_watch_s,
        solo=solo,
        cache_size=cache_size,
        otel=otel,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        auth_token=auth_token,
        log_format=log_format,
        log_level=log_level,
    )
    with structured_logging(settings.log_format, settings.log_level):
        workers = resolve_workers(settings)
        if workers > 1:
            code = serve_with_workers(settings, workers)
        else:
            run_event_loop(GamjeongServer(settings).serve_until_signalled(), settings.event_loop)
            code = 0
    _exit_now(code)


def _exit_now(code: int = 0) -> None:
    """End the process as soon as the server has stopped. The interpreter's own teardown (garbage-collecting the
    module graphs of transformers, tokenizers and onnxruntime) takes 1-3 s more, measured, which would put the exit past
    the grace period a supervisor such as Kubernetes allows; nothing is left to clean up by then."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# Every parameter of `serve` is a ServerSettings field; values are validated there (one clear error for a bad one).
_SETTING_NAMES = frozenset(serve.__code__.co_varnames[: serve.__code__.co_argcount])
