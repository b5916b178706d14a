"""The tracing exporter process (server/tracing.py starts it): the server's plain span records, received down a
pipe, made into the SDK's ReadableSpans and exported by its BatchSpanProcessor and OTLP/gRPC exporter.

Its own process because encoding spans is the expensive part (82 ms for 512 spans here): in the server's process it
would hold the GIL in long slices and stall calls. The records are tuples, their first field the kind below; the
server's side (`Tracing._plain` in server/tracing.py) writes them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from gamjeong.versions import gamjeong_version

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

log = logging.getLogger(__name__)

INSTRUMENTATION = "gamjeong.server"
# The kinds of record (a record's first field): a call's SERVER span, a tokenising, a model call with its requests.
REQUEST, TOKENIZE, BATCH = 0, 1, 2


def default_sampling() -> bool:
    """True for OpenTelemetry's default sampler (parent-based, every root), which both processes decide without the
    SDK; any other OTEL_TRACES_SAMPLER is asked through the SDK."""
    return os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on") in ("parentbased_always_on", "")


def export_forever(pipe: Connection, role: str) -> None:
    """Make spans of the server's records and export them with the SDK, until the server closes the pipe."""
    # The server decides when this ends (Ctrl-C or a service manager's SIGTERM to the whole group must not lose the
    # last spans): the pipe's end is the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM still ends it: multiprocessing's exit handler terminates a daemon child still running, then joins it
    # (ignoring SIGTERM hung the interpreter's exit when a server was never stopped).
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # process.pid: the server process whose spans these are (this exporter's parent), so that spans of one front end
    # of several can be told apart.
    attributes = {"service.version": gamjeong_version(), "gamjeong.process": role, "process.pid": os.getppid()}
    resource = Resource.create(attributes)
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "gamjeong"}))  # OTEL_SERVICE_NAME not given
    # The sampler from OTEL_TRACES_SAMPLER (for the model spans, the roots made here); the batch processor's delay
    # and sizes from OTEL_BSP_*; the exporter's endpoint, TLS, headers and timeout from OTEL_EXPORTER_OTLP_*.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    spans = SpanMaker(provider)
    timeout_s = 2.0
    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "spans":
            for record in message[1]:
                try:
                    spans.export(record)
                except Exception:  # one bad record must not stop the others
                    log.warning("could not make a span", exc_info=True)
        elif kind == "flush":
            pipe.send(("flushed", provider.force_flush(int(message[1] * 1000))))
        elif kind == "close":
            timeout_s = message[1]
            break
    # The last spans, for `timeout_s` at most: an unreachable collector would have the exporter retry for longer.
    last = threading.Thread(target=lambda: (provider.force_flush(int(timeout_s * 1000)), provider.shutdown()))
    last.daemon = True
    last.start()
    last.join(timeout_s)
    os._exit(0)


class SpanMaker:
    """The exporter process's side: the SDK's ReadableSpans of the server's plain records."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

        tracer: Any = provider.get_tracer(INSTRUMENTATION, gamjeong_version())
        self._processor, self._sampler, self._ids = tracer.span_processor, tracer.sampler, tracer.id_generator
        self._resource, self._scope = provider.resource, tracer._instrumentation_scope
        self._default_sampling = default_sampling()
        self._ReadableSpan, self._Link, self._SpanContext, self._SpanKind = ReadableSpan, Link, SpanContext, SpanKind
        self._Status, self._StatusCode, self._TraceState = Status, StatusCode, TraceState
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._TraceFlags = TraceFlags

    def _span(self, name: str, context: Any, **fields: Any) -> ReadableSpan:
        return self._ReadableSpan(
            name, context=context, resource=self._resource, instrumentation_scope=self._scope, **fields
        )

    def _context(self, trace_id: int, span_id: int | None = None) -> Any:
        return self._SpanContext(trace_id, span_id or self._ids.generate_span_id(), False, self._sampled)

    def _status(self, error: str | None) -> Any:
        return self._Status(self._StatusCode.UNSET) if error is None else self._Status(self._StatusCode.ERROR, error)

    def export(self, record: tuple[Any, ...]) -> None:
        for span in self.spans(record):
            self._processor.on_end(span)

    def spans(self, record: tuple[Any, ...]) -> list[ReadableSpan]:
        kind = record[0]
        if kind == REQUEST:
            _, name, attributes, (trace_id, span_id, _), parent, tracestate, start, end, error = record
            state = self._TraceState.from_header([tracestate]) if tracestate else None
            context = self._SpanContext(trace_id, span_id, False, self._sampled, state)
            remote = None
            if parent is not None:
                remote = self._SpanContext(parent[0], parent[1], True, self._TraceFlags(parent[2]), state)
            return [
                self._span(
                    name,
                    context,
                    parent=remote,
                    attributes=attributes,
                    kind=self._SpanKind.SERVER,
                    status=self._status(error),
                    start_time=start,
                    end_time=end,
                )
            ]
        if kind == TOKENIZE:
            _, (trace_id, span_id, _), start, end, texts = record
            parent = self._context(trace_id, span_id)
            return [
                self._span(
                    "gamjeong.tokenize",
                    self._context(trace_id),
                    parent=parent,
                    attributes={"gamjeong.texts": texts},
                    start_time=start,
                    end_time=end,
                )
            ]
        # A model call: one span in a trace of its own (it serves several), linked to every request in it; and per
        # request, the wait in the queue (from its texts' queueing to the call's start), linked to the model span.
        _, calls, start, end, attributes, error = record
        waited: dict[tuple[int, int, int], list[int]] = {}  # request -> [first enqueued, texts]
        for call, enqueued in calls:
            seen = waited.get(call)
            if seen is None:
                waited[call] = [enqueued, 1]
            else:
                seen[0], seen[1] = min(seen[0], enqueued), seen[1] + 1
        links = [self._Link(self._SpanContext(t, s, True, self._TraceFlags(f))) for t, s, f in waited]
        attributes = dict(attributes, **{"gamjeong.batch.requests": len(waited)})
        trace_id = self._ids.generate_trace_id()
        if not self._default_sampling:
            decision = self._sampler.should_sample(
                None, trace_id, "gamjeong.model", self._SpanKind.INTERNAL, attributes, links
            ).decision
            if not decision.is_sampled():
                return []
        model = self._context(trace_id)
        made = [
            self._span(
                "gamjeong.model",
                model,
                attributes=attributes,
                links=links,
                status=self._status(error),
                start_time=start,
                end_time=end,
            )
        ]
        model_link = [self._Link(model)]
        for (trace_id, span_id, _), (enqueued, texts) in waited.items():
            made.append(
                self._span(
                    "gamjeong.queue",
                    self._context(trace_id),
                    parent=self._context(trace_id, span_id),
                    attributes={"gamjeong.texts": texts, "gamjeong.batch.size": attributes["gamjeong.batch.size"]},
                    links=model_link,
                    start_time=enqueued,
                    end_time=start,
                )
            )
        return made
