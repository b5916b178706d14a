"""OpenTelemetry traces of every call (`gamjeong serve --otel`, or the standard OTEL_* variables), over OTLP/gRPC.

Four spans per call, the caller's W3C `traceparent` (gRPC metadata or HTTP header) as the request's parent:

    <rpc or HTTP route>  SERVER   the call, from the readiness check to its last answer (server/service.py)
      gamjeong.tokenize           tokenising the call's texts (one per model-bound batch of a call's texts)
      gamjeong.queue              a call's texts waiting in the batcher, until the model call they rode in started;
                                  linked to that model call
    gamjeong.model                one per model call, in a trace of its own, linked to every request in its batch
                                  (batch size, padded and real tokens, the instance as attributes)

The model span cannot have one parent: it serves several requests, of several traces (OpenTelemetry's shape for
batch processing is a span of its own with a link per request).

What a call pays: the SDK's own spans cost ~30 µs each here (attribute cleaning, locks, the sampler, the processor),
four per call ~0.4 ms at one client, twice the budget. So the hot path only notes ids and times: the request's span
id is drawn and its sampling decided when the call starts (the sampler from OTEL_TRACES_SAMPLER; the default obeys
the caller's sampled flag), the call's ids go in a context variable for the tokeniser and the batcher to read, and
each finished piece of work appends one tuple to a deque. Every 50 ms a recorder thread sends the tuples down a pipe
to an exporter process of this server's own (server/trace_export.py): there the SDK makes its ReadableSpans of them and its BatchSpanProcessor
and OTLP/gRPC exporter send them as usual. Encoding is the expensive part (measured: 82 ms for 512 spans here,
~0.6 ms per call): in the server's process it would hold the GIL in 80 ms slices and stall calls; in a process of
its own it runs on another core. The exporter process ignores SIGINT and ends when its server's pipe closes, after
exporting what it has (the server waits up to 2 s for that when it stops).

With `--workers N` the queue and the model live in the engine process: a front end sends each call's span context
(trace id, span id, flags) with its texts over the Unix socket, and the engine, tracing too, writes the queue and
model spans under those parents. Only the engine knows every request of a batch, so only it can write the one model
span with all its links; timings sent back to a front end could not.

Off (the default) nothing here is imported beyond this module's own light header: the hooks in the servicer, the
batcher and the link are one `is not None` check each.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from gamjeong.errors import GamjeongError
from gamjeong.server.trace_export import BATCH, REQUEST, TOKENIZE, default_sampling, export_forever

if TYPE_CHECKING:
    import grpc

    from gamjeong.server.settings import ServerSettings

log = logging.getLogger(__name__)

# Codes that mean the server failed (OpenTelemetry's RPC conventions); the others are the caller's problem.
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_MASK_64 = (1 << 64) - 1
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_RECORD_EVERY_S = 0.05
_NEEDED = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")


class CallTrace(NamedTuple):
    """A traced call's span, as the tokeniser and the batcher see it (and as it crosses the engine link)."""

    trace_id: int
    span_id: int
    flags: int  # W3C trace flags; 1: sampled


# The current call's span, when it is sampled (set for the duration of the call by RequestSpan).
_CURRENT: ContextVar[CallTrace | None] = ContextVar("gamjeong_call_trace", default=None)


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
    """Tracing to the endpoint the OTEL_* variables name (default localhost:4317), or None when off."""
    if not tracing_requested(settings):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", "grpc"):
        raise GamjeongError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; gamjeong exports OTLP over grpc."
        )
    for module in _NEEDED:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise GamjeongError(
                "Tracing (--otel or OTEL_* variables) needs the OpenTelemetry SDK: pip install 'gamjeong[otel]'."
            )
    return Tracing(role)


def _parse_traceparent(value: str) -> CallTrace | None:
    """The caller's span from a W3C traceparent header, or None for a missing or invalid one."""
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or not int(trace_id, 16) or not int(span_id, 16):
        return None
    return CallTrace(int(trace_id, 16), int(span_id, 16), int(flags, 16))


def _new_id(bits: int) -> int:
    """A random, non-zero trace (128 bits) or span (64 bits) id, as the SDK's RandomIdGenerator makes them."""
    while True:
        value = random.getrandbits(bits)
        if value:
            return value


class RequestSpan:
    """The SERVER span of one call: current (its ids in a context variable) from `start_request` until `end`."""

    __slots__ = ("_token", "_tracing", "attributes", "name", "parent", "start_ns", "trace", "tracestate")

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        attributes: dict[str, Any],
        trace: CallTrace | None,
        parent: CallTrace | None,
        tracestate: str | None,
    ) -> None:
        self._tracing, self.name, self.attributes = tracing, name, attributes
        self.trace, self.parent, self.tracestate = trace, parent, tracestate
        self.start_ns = time.time_ns()
        self._token = _CURRENT.set(trace)

    def end(self, code: grpc.StatusCode) -> None:
        # ValueError: a stream's generator closed from another context, which ends anyway.
        with contextlib.suppress(ValueError):
            _CURRENT.reset(self._token)
        if self.trace is not None:
            self._tracing.records.append((REQUEST, self, code, time.time_ns()))


class Tracing:
    """One server process's tracing: the hooks of the servicer, the batcher and the engine link, a recorder thread,
    and the exporter process it feeds."""

    def __init__(self, role: str = "server") -> None:
        self.role = role
        # The default sampler (parent-based, every root) is decided here without the SDK; another is asked.
        self._default_sampling = default_sampling()
        self._sampler: Any = None
        # The batcher and the tokeniser time with perf_counter_ns; spans want nanoseconds since the epoch.
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        self.records: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()  # one writer on the pipe at a time (the recorder, a flush)
        context = multiprocessing.get_context("spawn")  # no fork: the server holds threads and sockets
        self._pipe, child_end = context.Pipe(duplex=True)
        self._exporter = context.Process(
            target=export_forever, args=(child_end, role), name="gamjeong-tracing-export", daemon=True
        )
        self._exporter.start()
        child_end.close()
        self._broken = False
        self._stop = threading.Event()
        self._recorder = threading.Thread(target=self._record_forever, name="gamjeong-tracing", daemon=True)
        self._recorder.start()
        log.info("tracing on", extra={"role": role, "exporter_pid": self._exporter.pid})

    # --- the request side (server/service.py): ids and times only -------------------------------------------------
    def start_request(self, service: str, method: str, context: Any) -> RequestSpan:
        """The call's SERVER span, child of the caller's `traceparent`. `context` is a gRPC servicer context or the
        HTTP transport's stand-in (server/http/context.py), which names its route."""
        parent = tracestate = None
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                parent = _parse_traceparent(value)
            elif key == "tracestate":
                tracestate = value
        route = getattr(context, "http_route", None)
        if route is None:
            name = f"{service}/{method}"
            attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        else:
            verb, path = route
            name = f"{verb} {path}"
            attributes = {"http.request.method": verb, "http.route": path, "rpc.method": method}
        trace_id = parent.trace_id if parent is not None else _new_id(128)
        if self._default_sampling:
            sampled = parent is None or bool(parent.flags & 1)
        else:
            sampled = self._sample(parent, trace_id, name, attributes)
        trace = CallTrace(trace_id, _new_id(64), 1) if sampled else None
        return RequestSpan(self, name, attributes, trace, parent, tracestate)

    def _sample(self, parent: CallTrace | None, trace_id: int, name: str, attributes: dict[str, Any]) -> bool:
        """The decision of the sampler OTEL_TRACES_SAMPLER names (the SDK's), for a sampler other than the default."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        if self._sampler is None:
            from opentelemetry.sdk.trace import TracerProvider

            self._sampler = TracerProvider(shutdown_on_exit=False).sampler  # type: ignore[attr-defined]
        context = None
        if parent is not None:
            remote = SpanContext(parent.trace_id, parent.span_id, True, TraceFlags(parent.flags))
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        result = self._sampler.should_sample(context, trace_id, name, SpanKind.SERVER, attributes)
        return bool(result.decision.is_sampled())

    def record_tokenize(self, started_ns: int, ended_ns: int, texts: int) -> None:
        """The tokenising of `texts` texts of the current call, timed by the servicer (perf_counter_ns)."""
        call = _CURRENT.get()
        if call is not None:
            self.records.append((TOKENIZE, call, started_ns, ended_ns, texts))

    @staticmethod
    def current() -> CallTrace | None:
        """The current call's span, if it is sampled (what the batcher keeps with each queued text)."""
        return _CURRENT.get()

    # --- the model side (server/batcher.py) -----------------------------------------------------------------------
    def record_batch(
        self,
        requests: list[tuple[CallTrace | None, int]],
        started_ns: int,
        ended_ns: int,
        *,
        batch_size: int,
        padded_tokens: int,
        real_tokens: int,
        instance: int | str,
        error: BaseException | None = None,
    ) -> None:
        """One model call, with (the calling request's span or None, when its text was queued) per text."""
        if any(call is not None for call, _ in requests):
            attributes = {
                "gamjeong.batch.size": batch_size,
                "gamjeong.batch.padded_tokens": padded_tokens,
                "gamjeong.batch.real_tokens": real_tokens,
                "gamjeong.model.instance": str(instance),
            }
            error_name = None if error is None else error.__class__.__name__
            self.records.append((BATCH, requests, started_ns, ended_ns, attributes, error_name))

    # --- the engine link (server/engine_link.py): calls' spans on the wire ----------------------------------------
    @staticmethod
    def to_wire(calls: Sequence[CallTrace | None]) -> np.ndarray:
        """uint64 [calls, 4]: trace id (high, low), span id, flags; all zero for a call that is not traced."""
        rows = np.zeros((len(calls), 4), dtype=np.uint64)
        for i, c in enumerate(calls):
            if c is not None:
                rows[i] = (c.trace_id >> 64, c.trace_id & _MASK_64, c.span_id, c.flags)
        return rows

    @staticmethod
    def from_wire(row: np.ndarray) -> CallTrace | None:
        high, low, span_id, flags = (int(v) for v in row)
        return None if span_id == 0 else CallTrace((high << 64) | low, span_id, flags)

    # --- the recorder thread: the records, as plain tuples, down the pipe -----------------------------------------
    def _record_forever(self) -> None:
        while not self._stop.wait(_RECORD_EVERY_S):
            self._send_records()

    def _plain(self, record: tuple[Any, ...]) -> tuple[Any, ...]:
        """A record as picklable values, times in ns since the epoch."""
        offset = self._epoch_offset_ns
        kind = record[0]
        if kind == REQUEST:
            _, request, code, ended_ns = record
            attributes = dict(request.attributes, **{"rpc.grpc.status_code": code.value[0]})
            if "http.route" in attributes:
                from gamjeong.server.status import http_status

                attributes["http.response.status_code"] = http_status(code)
            error = code.name if code.name in _SERVER_FAULTS else None
            parent = None if request.parent is None else tuple(request.parent)
            trace = tuple(request.trace)
            return (REQUEST, request.name, attributes, trace, parent, request.tracestate, request.start_ns, ended_ns, error)  # fmt: skip
        if kind == TOKENIZE:
            _, call, started_ns, ended_ns, texts = record
            return (TOKENIZE, tuple(call), started_ns + offset, ended_ns + offset, texts)
        _, requests, started_ns, ended_ns, attributes, error_name = record
        calls = [(tuple(call), enqueued_ns + offset) for call, enqueued_ns in requests if call is not None]
        return (BATCH, calls, started_ns + offset, ended_ns + offset, attributes, error_name)

    def _send_records(self) -> None:
        with self._lock:
            self._send_records_locked()

    def _send_records_locked(self) -> None:
        # Taken and sent under the pipe's lock: a flush must not overtake records the recorder took but had not sent.
        records = self.records
        batch = []
        while records:
            batch.append(self._plain(records.popleft()))
        if batch and not self._broken:
            try:
                self._pipe.send(("spans", batch))
            except OSError:  # the exporter process is gone: tracing stops, serving goes on
                self._broken = True
                log.warning("the tracing exporter process is gone; no more spans are exported")

    # --- life cycle -------------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every span of the calls ended so far; True once the exporter has sent them (tests; shutdown)."""
        with self._lock:
            self._send_records_locked()
            try:
                self._pipe.send(("flush", timeout_s))
                if not self._pipe.poll(timeout_s + 1.0):
                    return False
                return bool(self._pipe.recv()[1])
            except (OSError, EOFError):
                return False

    def close(self, timeout_s: float = 2.0) -> threading.Thread:
        """Stop the recorder and let the exporter process send what it has and end, in a daemon thread (an
        unreachable collector must not hold up the exit); the caller may join it for up to `timeout_s`."""

        def shut() -> None:
            self._stop.set()
            self._recorder.join()
            with self._lock, contextlib.suppress(OSError):
                self._send_records_locked()
                self._pipe.send(("close", timeout_s))
            self._exporter.join(timeout_s + 1.0)
            if self._exporter.is_alive():
                self._exporter.kill()
            self._pipe.close()

        thread = threading.Thread(target=shut, name="gamjeong-tracing-close", daemon=True)
        thread.start()
        return thread
