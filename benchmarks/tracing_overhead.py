"""What tracing costs one client: `gamjeong serve` with `--otel` against the same server without, paired in time.

Two server processes on the same model, one exporting its spans over OTLP/gRPC to a receiver in this process (the
collector's trace service from opentelemetry-proto; it counts what it gets), the other not tracing. One client sends
the same text to both, in random order within each pair, so the machine's drift (tens of percent from one minute to
the next here) hits both alike. Reported per round: each server's p50 and the median of the paired differences.

    python -m gamjeong.benchmarks.tracing_overhead --model MODEL_DIR [--pairs 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .server_process import free_port, stop_process, wait_until_serving

TEXTS = ["오늘 정말 행복해요", "진짜 화가 나서 못 참겠어", "밤길이 너무 무서워요", "점심은 김밥을 먹었다"]


class CountingReceiver:
    """An OTLP/gRPC trace receiver that counts the spans it is sent."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = 0
        lock = threading.Lock()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with lock:
                    receiver.spans += count
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=1))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)


@contextlib.contextmanager
def serving(model: Path, log: Path, otel_endpoint: str | None) -> Iterator[str]:
    """`gamjeong serve` on a free port, tracing to `otel_endpoint` (or not tracing); yields its target."""
    port = free_port()
    command = [
        sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", "-1", "--log-format", "text", "--log-level", "warning",
    ]  # fmt: skip
    # OTEL_BSP_* (the batch processor's delay and sizes) pass through; the rest is set here.
    env = {k: v for k, v in os.environ.items() if k.startswith("OTEL_BSP_") or not k.startswith(("OTEL_", "GAMJEONG_"))}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if otel_endpoint is not None:
        command.append("--otel")
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otel_endpoint, "OTEL_SERVICE_NAME": "gamjeong-bench"}
    target = f"127.0.0.1:{port}"
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_serving(target, 180, process, log)
            yield target
        finally:
            stop_process(process)


def paired_round(stubs: dict[str, Any], pairs: int, rng: random.Random) -> dict[str, Any]:
    from gamjeong.api.v1 import emotion_pb2 as pb

    times: dict[str, list[float]] = {name: [] for name in stubs}
    for i in range(pairs):
        request = pb.ClassifyRequest(texts=[TEXTS[i % len(TEXTS)]])
        # Every call carries a sampled traceparent: the traced server records all four spans for each.
        metadata = (("traceparent", f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"),)
        order = list(stubs)
        rng.shuffle(order)
        for name in order:
            started = time.perf_counter()
            stubs[name].Classify(request, metadata=metadata, timeout=30)
            times[name].append((time.perf_counter() - started) * 1e3)
    differences = [on - off for on, off in zip(times["on"], times["off"], strict=True)]
    return {
        "pairs": pairs,
        "off_p50_ms": round(statistics.median(times["off"]), 3),
        "on_p50_ms": round(statistics.median(times["on"]), 3),
        "p50_difference_ms": round(statistics.median(times["on"]) - statistics.median(times["off"]), 3),
        "median_paired_difference_ms": round(statistics.median(differences), 3),
    }


def main(argv: list[str] | None = None) -> None:
    import grpc

    from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model directory")
    parser.add_argument("--pairs", type=int, default=400, help="paired calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured pairs first")
    parser.add_argument(
        "--control", action="store_true", help="both servers untraced (how far apart two equal ones are)"
    )
    args = parser.parse_args(argv)
    receiver = CountingReceiver()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
        off = stack.enter_context(serving(args.model, Path(logs) / "off.log", None))
        endpoint = None if args.control else f"http://127.0.0.1:{receiver.port}"
        on = stack.enter_context(serving(args.model, Path(logs) / "on.log", endpoint))
        channels = {"off": grpc.insecure_channel(off), "on": grpc.insecure_channel(on)}
        stubs = {name: pb_grpc.EmotionClassifierStub(c) for name, c in channels.items()}
        paired_round(stubs, args.warmup, rng)
        rounds = [paired_round(stubs, args.pairs, rng) for _ in range(args.rounds)]
        for channel in channels.values():
            channel.close()
    time.sleep(0.5)  # the traced server flushes its last spans as it stops
    receiver.stop()
    calls = args.warmup + args.pairs * args.rounds
    print(json.dumps({"rounds": rounds, "traced_calls": calls, "spans_received": receiver.spans}, indent=2))


if __name__ == "__main__":
    main()
