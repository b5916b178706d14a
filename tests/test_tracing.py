"""OpenTelemetry tracing (`gamjeong serve --otel`, server/tracing.py), checked on what a real OTLP/gRPC receiver gets.

The receiver is the collector's own trace service from opentelemetry-proto on a grpc server in the test; the server
exports to it with the SDK's OTLP/gRPC exporter, configured by the standard OTEL_* variables only. Checked: the
caller's traceparent (gRPC metadata, HTTP header) is the parent; the request, tokenise and queue spans nest; one model
span per model call, linked to every request in it (8 requests held together by a gated model: one span, 8 links);
the caller's "not sampled" is obeyed; with `--workers` the engine writes the queue and model spans under the front
end's request. Off by default, and then the SDK is not even imported.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from processes import alive, descendants, kill_if_running, pump, wait_for
from test_server import GatedPredictor, until

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.errors import GamjeongError
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.engine import InferenceEngine
from gamjeong.server.engine_link import serve_engine
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.settings import load_settings
from gamjeong.server.tracing import start_tracing, tracing_requested

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
TEXT = "오늘 정말 행복해요"
METHOD = "gamjeong.v1.EmotionClassifier/Classify"


@dataclass(frozen=True)
class Received:
    """One span as the receiver got it, with its resource's attributes."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str  # "" for a root
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        self.spans.append(
                            Received(
                                s.name,
                                s.kind,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                                {a.key: _value(a.value) for a in s.attributes},
                                resource,
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def in_trace(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver on a free port, and the standard variables pointing the server's exporter at it."""
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gamjeong-test")
    yield receiver
    server.stop(0)


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(header value, trace id, span id) of a caller's span."""
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


async def flush(*servers: Any) -> None:
    """Export every span ended so far (the SDK's force_flush: the receiver has them when it returns)."""
    for server in servers:
        tracing = server if not hasattr(server, "tracing") else server.tracing
        assert await asyncio.to_thread(tracing.flush)


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture
def make_server(start_server, predictor: Predictor, collector: Receiver):
    async def start(used: Predictor | None = None, **overrides: object) -> GamjeongServer:
        chosen = used or predictor
        # grouping "fill": a call's texts stay in one model call (the cost model may split different lengths).
        values = {"otel": True, "grace_s": 5, "instances": 1, "solo": False, "grouping": "fill"} | overrides
        return await start_server(lambda: chosen, **values)

    return start


def one(spans: list[Received]) -> Received:
    assert len(spans) == 1, spans
    return spans[0]


def check_nesting(
    received: Receiver, request: Received, texts: int, padded_tokens: int, batch_size: int | None = None
) -> None:
    """Tokenise and queue spans are children of the request; the queue span and the model span link each other."""
    family = received.in_trace(request.trace_id)
    tokenize = one([s for s in family if s.name == "gamjeong.tokenize"])
    queue = one([s for s in family if s.name == "gamjeong.queue"])
    assert tokenize.parent == request.span_id and tokenize.attributes["gamjeong.texts"] == texts
    assert queue.parent == request.span_id and queue.attributes["gamjeong.texts"] == texts
    (model_ref,) = queue.links
    model = one([s for s in received.named("gamjeong.model") if (s.trace_id, s.span_id) == model_ref])
    assert model.parent == ""  # its own trace: it serves several
    assert (request.trace_id, request.span_id) in model.links
    assert model.attributes["gamjeong.batch.size"] == (batch_size or texts)
    assert model.attributes["gamjeong.batch.padded_tokens"] == padded_tokens


# --- one process -------------------------------------------------------------------------------------------------
async def test_a_grpc_call_nests_its_spans_under_the_callers_traceparent(make_server, collector, predictor) -> None:
    server = await make_server()
    header, trace_id, caller_span = traceparent()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.EmotionClassifierStub(channel)
        await stub.Classify(pb.ClassifyRequest(texts=[TEXT, TEXT + " 정말로"]), metadata=(("traceparent", header),))
        await stub.Classify(pb.ClassifyRequest(texts=[TEXT]))  # no traceparent: a trace of its own
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Classify(pb.ClassifyRequest(texts=[" "]), metadata=(("traceparent", traceparent()[0]),))
    await flush(server)
    requests = collector.named(METHOD)
    request = one([s for s in requests if s.trace_id == trace_id])
    assert request.kind == SERVER_KIND and request.parent == caller_span
    assert request.attributes["rpc.system"] == "grpc" and request.attributes["rpc.grpc.status_code"] == 0
    assert request.resource["service.name"] == "gamjeong-test"
    lengths = [len(e.input_ids) for e in predictor.encode([TEXT, TEXT + " 정말로"])]
    check_nesting(collector, request, texts=2, padded_tokens=2 * max(lengths))
    unparented = [s for s in requests if s.trace_id != trace_id and s.parent == ""]
    assert len(unparented) == 1 and unparented[0].attributes["rpc.grpc.status_code"] == 0
    refused = one([s for s in requests if s.attributes["rpc.grpc.status_code"] != 0])
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not [s for s in collector.in_trace(refused.trace_id) if s.name != METHOD]  # it never reached the model


async def test_an_http_call_is_traced_under_its_traceparent_header(make_server, collector, predictor) -> None:
    server = await make_server(http_port=0)
    header, trace_id, caller_span = traceparent()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as client:
        response = await client.post("/v1/classify", json={"texts": [TEXT]}, headers={"traceparent": header})
    assert response.status_code == 200
    await flush(server)
    request = one(collector.named("POST /v1/classify"))
    assert request.trace_id == trace_id and request.parent == caller_span and request.kind == SERVER_KIND
    assert request.attributes["http.route"] == "/v1/classify"
    assert request.attributes["http.response.status_code"] == 200
    check_nesting(collector, request, texts=1, padded_tokens=len(predictor.encode([TEXT])[0].input_ids))


async def test_a_caller_that_does_not_sample_gets_no_spans(make_server, collector) -> None:
    server = await make_server()
    header, trace_id, _ = traceparent(sampled=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await pb_grpc.EmotionClassifierStub(channel).Classify(
            pb.ClassifyRequest(texts=[TEXT]), metadata=(("traceparent", header),)
        )
    await flush(server)
    assert collector.in_trace(trace_id) == []
    assert collector.named("gamjeong.model") == []  # the only call in its batch was not traced


async def test_eight_requests_in_one_batch_give_one_model_span_linked_eight_times(
    make_server, collector, predictor
) -> None:
    gated = GatedPredictor(predictor)
    server = await make_server(gated, max_batch_size=16, grouping="fill")
    gated.gate.clear()
    gated.running.clear()
    gated.batch_sizes.clear()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.EmotionClassifierStub(channel)
        first = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(texts=[TEXT])))  # holds the model
        await until(gated.running.is_set, "the first call to reach the model")
        callers = [traceparent() for _ in range(8)]
        calls = [
            asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(texts=[TEXT]), metadata=(("traceparent", h),)))
            for h, _, _ in callers
        ]
        await until(lambda: server.batcher.depth == 8, "8 queued texts")
        gated.gate.set()
        await asyncio.gather(first, *calls)
    await flush(server)
    assert gated.batch_sizes == [1, 8]
    requests = [one([s for s in collector.named(METHOD) if s.trace_id == t]) for _, t, _ in callers]
    assert [r.parent for r in requests] == [s for _, _, s in callers]
    model = one([s for s in collector.named("gamjeong.model") if s.attributes["gamjeong.batch.size"] == 8])
    assert sorted(model.links) == sorted((r.trace_id, r.span_id) for r in requests)
    assert model.attributes["gamjeong.batch.requests"] == 8
    for request in requests:
        width = len(predictor.encode([TEXT])[0].input_ids)
        check_nesting(collector, request, texts=1, padded_tokens=8 * width, batch_size=8)
        queue = one([s for s in collector.in_trace(request.trace_id) if s.name == "gamjeong.queue"])
        assert queue.attributes["gamjeong.batch.size"] == 8


# --- --workers: the queue and the model are in the engine process ------------------------------------------------
async def test_through_the_engine_link_the_engine_writes_queue_and_model_spans_under_the_front_ends_request(
    tiny_int8_dir: Path, tmp_path: Path, collector: Receiver, predictor: Predictor
) -> None:
    settings = load_settings(
        model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, otel=True, instances=1, grouping="fill"
    )
    engine_tracing = start_tracing(settings, role="engine")
    engine = InferenceEngine(settings, ServerMetrics(), lambda: predictor, tracing=engine_tracing)
    attachment = await engine.load()
    socket_path = str(tmp_path / "engine.sock")
    endpoint = await serve_engine(socket_path, attachment, tiny_int8_dir)
    front = GamjeongServer(settings, engine_socket=socket_path)
    await front.start()
    try:
        header, trace_id, caller_span = traceparent()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            stub = pb_grpc.EmotionClassifierStub(channel)
            await stub.Classify(pb.ClassifyRequest(texts=[TEXT, TEXT]), metadata=(("traceparent", header),))
        await flush(front, engine_tracing)
    finally:
        await front.stop(0)
        endpoint.close()
        await engine.stop()
        engine_tracing.close().join(5)
    request = one([s for s in collector.named(METHOD) if s.trace_id == trace_id])
    assert request.parent == caller_span and request.resource["gamjeong.process"] == "server"
    check_nesting(collector, request, texts=2, padded_tokens=2 * len(predictor.encode([TEXT])[0].input_ids))
    queue = one([s for s in collector.in_trace(trace_id) if s.name == "gamjeong.queue"])
    assert queue.resource["gamjeong.process"] == "engine"


# --- switching it on and off ---------------------------------------------------------------------------------------
def test_on_by_flag_or_the_standard_variables_and_off_by_default(
    tiny_int8_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "GAMJEONG_")):
            monkeypatch.delenv(name)
    settings = load_settings(model=tiny_int8_dir)
    assert not tracing_requested(settings)
    assert tracing_requested(load_settings(model=tiny_int8_dir, otel=True))
    monkeypatch.setenv("GAMJEONG_OTEL", "true")
    assert tracing_requested(load_settings(model=tiny_int8_dir))
    monkeypatch.delenv("GAMJEONG_OTEL")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert tracing_requested(settings)
    assert not tracing_requested(load_settings(model=tiny_int8_dir, otel=False))  # --no-otel wins
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing_requested(settings)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert tracing_requested(settings)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_requested(load_settings(model=tiny_int8_dir, otel=True))
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(GamjeongError, match="over grpc"):
        start_tracing(settings)


def test_without_the_sdk_asking_for_tracing_is_one_clear_error(
    tiny_int8_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # what an install without the extra has
    with pytest.raises(GamjeongError, match=r"pip install 'gamjeong\[otel\]'"):
        start_tracing(load_settings(model=tiny_int8_dir, otel=True))


def test_off_the_server_imports_no_opentelemetry_sdk(tiny_int8_dir: Path) -> None:
    script = (
        "import sys, asyncio\n"
        "from gamjeong.server.app import GamjeongServer\n"
        "from gamjeong.server.settings import load_settings\n"
        "async def main():\n"
        f"    s = GamjeongServer(load_settings(model={str(tiny_int8_dir)!r}, host='127.0.0.1', port=0,"
        " metrics_port=-1, http_port=0, grouping='fill', instances=1, solo=False))\n"
        "    await s.start(); await s.stop(0)\n"
        "    assert s.tracing is None and s.servicer.tracing is None\n"
        # FastAPI itself imports the OpenTelemetry API (not the SDK): only the SDK and the exporter are ours.
        "    print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GAMJEONG_"))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- the real process tree: `gamjeong serve --workers 2 --otel` -------------------------------------------------
def test_serve_with_two_workers_traces_each_call_across_front_end_and_engine_and_exits_whole(
    tiny_int8_dir: Path, collector: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the exporters send every 0.1 s, not every 5 s
    command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(tiny_int8_dir), "--host", "127.0.0.1"]
    command += ["--port", "0", "--metrics-port", "0", "--workers", "2", "--otel", "--log-format", "json"]
    command += ["--instances", "1", "--no-solo", "--grace-s", "3", "--drain-s", "0.2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = pump(process.stderr, lines)
    callers: dict[str, str] = {}  # trace id -> the caller's span id
    try:
        port = wait_for(lines, "listening")["port"]
        wait_for(lines, "model ready")
        # A channel per call: the kernel spreads the connections over both front ends.
        for _ in range(12):
            header, trace_id, caller_span = traceparent()
            # a local subchannel pool: a new connection each time (gRPC would reuse the last one otherwise)
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                stub = pb_grpc.EmotionClassifierStub(channel)
                stub.Classify(pb.ClassifyRequest(texts=[TEXT]), metadata=(("traceparent", header),), timeout=10)
            callers[trace_id] = caller_span

        def all_arrived() -> bool:
            names = [{s.name for s in collector.in_trace(trace_id)} for trace_id in callers]
            return all({METHOD, "gamjeong.tokenize", "gamjeong.queue"} <= got for got in names)

        deadline = time.monotonic() + 20
        while not all_arrived() and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        kill_if_running(process)
    reader.join(10)
    assert all_arrived(), f"spans missing: {sorted(s.name for s in collector.spans)}\n{''.join(lines)}"
    padded = len(load_predictor(tiny_int8_dir).encode([TEXT])[0].input_ids)
    front_ends, engines = set(), set()
    for trace_id, caller_span in callers.items():
        request = one([s for s in collector.in_trace(trace_id) if s.name == METHOD])
        assert request.parent == caller_span and request.resource["gamjeong.process"] == "server"
        check_nesting(collector, request, texts=1, padded_tokens=padded)
        queue = one([s for s in collector.in_trace(trace_id) if s.name == "gamjeong.queue"])
        assert queue.resource["gamjeong.process"] == "engine"
        front_ends.add(request.resource["process.pid"])
        engines.add(queue.resource["process.pid"])
    assert len(front_ends) == 2 and len(engines) == 1, (front_ends, engines)  # both front ends, one engine
    # supervisor's children (engine, 2 front ends) and their exporter processes: none outlives the supervisor
    assert len(tree) >= 6, tree
    assert not [pid for pid in tree if alive(pid)], "a process outlived its supervisor"
