"""OpenTelemetry traces of every call (`gamjeong serve --otel`, or the standard OTEL_* variables), over OTLP/gRPC.

Four spans per call, the caller's W3C `traceparent` (gRPC metadata or HTTP header) as the request's parent:

    <rpc or HTTP route>  SERVER   the call, from the readiness check to its last answer (server/service.py)
      gamjeong.tokenize           tokenising the call's texts (one per model-bound batch of a call's texts)
      gamjeong.queue              a call's texts waiting in the batcher, until the model call they rode in started;
                                  linked to that model call
    gamjeong.model                one per model call, in a trace of its own, linked to every request in its batch
                                  (batch size, padded and real tokens, the instance as attributes)

The model span cannot have one parent: it serves several requests, of several traces (OpenTelemetry's shape for
batch processing is a span of its own with a link per request). The queue and model spans are written when the model
call ends, with the times the batcher measured, so the batcher does no tracing work while it waits or runs.

With `--workers N` the queue and the model live in the engine process: a front end sends each call's span context
(trace id, span id, flags) with its texts over the Unix socket, and the engine, tracing too, writes the queue and
model spans under those parents. Only the engine knows every request of a batch, so only it can write the one model
span with all its links; timings sent back to a front end could not.

Off (the default) nothing here is imported beyond this module's own light header: the hooks in the servicer, the
batcher and the link are one `is not None` check each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gamjeong.errors import GamjeongError
from gamjeong.versions import gamjeong_version

if TYPE_CHECKING:
    import grpc
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext

    from gamjeong.server.settings import ServerSettings

log = logging.getLogger(__name__)

INSTRUMENTATION = "gamjeong.server"
# What propagates a trace (W3C Trace Context): the only metadata or headers read.
_CARRIED = ("traceparent", "tracestate")
# Codes that mean the server failed (OpenTelemetry's RPC conventions); the others are the caller's problem.
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_MASK_64 = (1 << 64) - 1


def tracing_requested(settings: ServerSettings) -> bool:
    """--otel / --no-otel when given; else on when the OTEL_* variables ask for an OTLP exporter or name an endpoint.
    OTEL_SDK_DISABLED=true turns it off, as in every OpenTelemetry SDK."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if settings.otel is not None:
        return settings.otel
    exporters = os.environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return "otlp" in {e.strip().lower() for e in exporters.split(",")}
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def start_tracing(settings: ServerSettings, role: str = "server") -> Tracing | None:
    """A Tracing exporting to the endpoint the OTEL_* variables name (default localhost:4317), or None when off."""
    if not tracing_requested(settings):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", "grpc"):
        raise GamjeongError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; gamjeong exports OTLP over grpc."
        )
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise GamjeongError(
            "Tracing (--otel or OTEL_* variables) needs the OpenTelemetry SDK: pip install 'gamjeong[otel]'."
        ) from None
    resource = Resource.create({"service.version": gamjeong_version(), "gamjeong.process": role})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "gamjeong"}))  # OTEL_SERVICE_NAME not given
    # The sampler comes from OTEL_TRACES_SAMPLER (default: the caller's decision, else every call); the batch
    # processor's delay and sizes from OTEL_BSP_*; the exporter's endpoint, TLS, headers, timeout from OTEL_EXPORTER_*.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on", extra={"service": resource.attributes.get("service.name"), "process": role})
    return Tracing(provider)


class RequestSpan:
    """The SERVER span of one call, current (so the spans of its work nest under it) until `end`."""

    __slots__ = ("_http", "_token", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span, token: object, http: bool) -> None:
        self._tracing, self.span, self._token, self._http = tracing, span, token, http

    def end(self, code: grpc.StatusCode) -> None:
        span, otel = self.span, self._tracing
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if self._http:
            from gamjeong.server.status import http_status

            span.set_attribute("http.response.status_code", http_status(code))
        if code.name in _SERVER_FAULTS:
            span.set_status(otel.error_status(code.name))
        span.end()
        otel.detach(self._token)


class Tracing:
    """One server process's tracer: what the hooks in the servicer, the batcher and the engine link call."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._trace = trace
        self._attach, self.detach = context.attach, context.detach
        self._Context, self._Link, self._NonRecordingSpan = Context, Link, NonRecordingSpan
        self._server_kind = SpanKind.SERVER
        self._error = StatusCode.ERROR
        self._Status = Status
        self._tracer = provider.get_tracer(INSTRUMENTATION, gamjeong_version())
        self._propagator = TraceContextTextMapPropagator()
        # The batcher and the tokeniser time with perf_counter_ns; spans want nanoseconds since the epoch.
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()

    def _epoch(self, perf_ns: int) -> int:
        return perf_ns + self._epoch_offset_ns

    def error_status(self, description: str) -> Any:
        return self._Status(self._error, description)

    # --- the request side (server/service.py) ---------------------------------------------------------------------
    def start_request(self, service: str, method: str, context: Any) -> RequestSpan:
        """The call's SERVER span, child of the caller's `traceparent`, made current. `context` is a gRPC servicer
        context or the HTTP transport's stand-in (server/http/context.py), which names its route."""
        metadata = context.invocation_metadata() or ()
        carrier = {key: value for key, value in metadata if key in _CARRIED}
        parent = self._propagator.extract(carrier) if carrier else None
        route = getattr(context, "http_route", None)
        if route is None:
            name = f"{service}/{method}"
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        else:
            verb, path = route
            name = f"{verb} {path}"
            attributes = {"http.request.method": verb, "http.route": path, "rpc.method": method}
        span = self._tracer.start_span(name, context=parent, kind=self._server_kind, attributes=attributes)
        token = self._attach(self._trace.set_span_in_context(span))
        return RequestSpan(self, span, token, route is not None)

    def record_tokenize(self, started_ns: int, ended_ns: int, texts: int) -> None:
        """The tokenising of `texts` texts of the current call, timed by the servicer (perf_counter_ns)."""
        span = self._tracer.start_span(
            "gamjeong.tokenize", start_time=self._epoch(started_ns), attributes={"gamjeong.texts": texts}
        )
        span.end(end_time=self._epoch(ended_ns))

    def current(self) -> SpanContext | None:
        """The current call's span context, if it is sampled (what the batcher keeps with each queued text)."""
        span_context = self._trace.get_current_span().get_span_context()
        return span_context if span_context.trace_flags.sampled else None

    # --- the model side (server/batcher.py) -----------------------------------------------------------------------
    def record_batch(
        self,
        requests: Iterable[tuple[SpanContext | None, int]],
        started_ns: int,
        ended_ns: int,
        *,
        batch_size: int,
        padded_tokens: int,
        real_tokens: int,
        instance: int | str,
        error: BaseException | None = None,
    ) -> None:
        """One model call: its span (linked to every request that had texts in it) and each request's queue span.
        `requests` is (the request's span context or None, when its text was queued) per text of the batch."""
        Link = self._Link
        waited: dict[int, tuple[SpanContext, int, int]] = {}  # span id -> (context, first enqueued, texts)
        for span_context, enqueued_ns in requests:
            if span_context is None:
                continue
            seen = waited.get(span_context.span_id)
            if seen is None:
                waited[span_context.span_id] = (span_context, enqueued_ns, 1)
            else:
                waited[span_context.span_id] = (span_context, min(seen[1], enqueued_ns), seen[2] + 1)
        if not waited:
            return  # nobody in this batch is traced
        model = self._tracer.start_span(
            "gamjeong.model",
            context=self._Context(),  # a root: it belongs to every linked request's trace, so to none of them
            links=[Link(c) for c, _, _ in waited.values()],
            start_time=self._epoch(started_ns),
            attributes={
                "gamjeong.batch.size": batch_size,
                "gamjeong.batch.padded_tokens": padded_tokens,
                "gamjeong.batch.real_tokens": real_tokens,
                "gamjeong.batch.requests": len(waited),
                "gamjeong.model.instance": str(instance),
            },
        )
        if error is not None:
            model.record_exception(error)
            model.set_status(self.error_status(error.__class__.__name__))
        model.end(end_time=self._epoch(ended_ns))
        model_link = [Link(model.get_span_context())]
        start = self._epoch(started_ns)
        for span_context, enqueued_ns, texts in waited.values():
            parent = self._trace.set_span_in_context(self._NonRecordingSpan(span_context))
            queue = self._tracer.start_span(
                "gamjeong.queue",
                context=parent,
                links=model_link,
                start_time=self._epoch(enqueued_ns),
                attributes={"gamjeong.texts": texts, "gamjeong.batch.size": batch_size},
            )
            queue.end(end_time=start)

    # --- the engine link (server/engine_link.py): span contexts of calls, on the wire -----------------------------
    @staticmethod
    def to_wire(contexts: Sequence[SpanContext | None]) -> np.ndarray:
        """uint64 [calls, 4]: trace id (high, low), span id, flags; all zero for a call that is not traced."""
        rows = np.zeros((len(contexts), 4), dtype=np.uint64)
        for i, c in enumerate(contexts):
            if c is not None:
                rows[i] = (c.trace_id >> 64, c.trace_id & _MASK_64, c.span_id, int(c.trace_flags))
        return rows

    @staticmethod
    def from_wire(row: np.ndarray) -> SpanContext | None:
        high, low, span_id, flags = (int(v) for v in row)
        if span_id == 0:
            return None
        from opentelemetry.trace import SpanContext, TraceFlags

        return SpanContext((high << 64) | low, span_id, is_remote=True, trace_flags=TraceFlags(flags))

    # --- life cycle -------------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now (tests; shutdown)."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def close(self, timeout_s: float = 2.0) -> threading.Thread:
        """Flush and shut the exporter down in a daemon thread (an unreachable collector must not hold up the exit);
        the caller may join it for up to `timeout_s`."""

        def shut() -> None:
            try:
                self.flush(timeout_s)
                self.provider.shutdown()
            except Exception:  # nothing to do about a collector that is gone at exit
                log.warning("could not flush the last spans", exc_info=True)

        thread = threading.Thread(target=shut, name="gamjeong-tracing-close", daemon=True)
        thread.start()
        return thread
