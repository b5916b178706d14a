"""Measurements for serving at scale (docs/benchmarks.md, "Serving at scale"): process start-up (RSS and time to
SERVING), model instances per process, and the result cache on a chat-like workload.

Run as `python -m gamjeong.benchmarks.scaling startup|instances|cache --model EXPORTED_DIR`. Each measurement starts
real `gamjeong serve` processes and drives them over gRPC, so what is measured is what an operator runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident set size of a process from /proc (Linux), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def serve_command(model: Path, port: int, extra: Sequence[str] = ()) -> list[str]:
    # The console script's own module: the same imports `gamjeong serve` makes.
    return [
        sys.executable,
        "-c",
        "from gamjeong.cli import main; main()",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--metrics-port",
        "-1",
        "--log-format",
        "text",
        *extra,
    ]


def wait_serving(port: int, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise TimeoutError("server did not report SERVING")


def start_server(model: Path, extra: Sequence[str] = ()) -> tuple[subprocess.Popen, int, float]:
    """(process, port, seconds from process start to SERVING)."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(serve_command(model, port, extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_serving(port, proc)
    return proc, port, time.perf_counter() - started


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_startup(model: Path, runs: int) -> dict[str, object]:
    rows = []
    for _ in range(runs):
        proc, _port, seconds = start_server(model, ["--drain-s", "0"])
        rss = rss_mib(proc.pid)
        modules = _heavy_modules(proc.pid)
        stop_server(proc)
        rows.append({"serving_s": round(seconds, 2), "rss_mib": round(rss, 1), "heavy_modules_mapped": modules})
    return {"model": str(model), "runs": rows, "load_average": os.getloadavg()}


def _heavy_modules(pid: int) -> list[str]:
    """Which of torch/transformers' shared objects the process has mapped (a cross-check of the RSS)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({name for name in ("libtorch", "transformers", "optimum") if name in maps})


# --- load generation ----------------------------------------------------------------------------------------------
async def _drive(port: int, texts: Sequence[str], concurrency: int) -> dict[str, float]:
    """`concurrency` callers, each sending one-text Classify calls back to back, over one channel; texts in order."""
    from gamjeong.clients import AsyncEmotionClient

    latencies: list[float] = []
    cursor = iter(range(len(texts)))
    async with AsyncEmotionClient(f"127.0.0.1:{port}", timeout=120) as client:
        await client.classify([texts[0]])  # connect

        async def caller() -> None:
            for i in cursor:
                started = time.perf_counter()
                await client.classify([texts[i]])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "texts_per_s": round(len(texts) / wall, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
    }


def bench_texts(count: int, seed: int = 0) -> list[str]:
    """Distinct texts (no repeats: a repeated text would only measure the cache, which is off here)."""
    from gamjeong.samples import sample_texts

    rng = random.Random(seed)
    base = list(sample_texts())
    return [f"{rng.choice(base)} {i}" for i in range(count)]


def chat_texts(count: int, seed: int = 0) -> list[str]:
    """A chat-like feed: reactions repeat (Zipf-distributed over a small set), other messages are mostly unique.

    Half the messages come from 40 short reactions drawn with Zipf weights (1/rank), the way "ㅋㅋㅋ", "헐" and
    greetings dominate a chat log; the other half are the sample sentences with a running number (unique).
    """
    from gamjeong.samples import sample_texts

    reactions = [
        "ㅋㅋㅋ", "ㅋㅋㅋㅋㅋ", "ㅎㅎ", "헐", "안녕하세요", "ㅠㅠ", "ㅇㅇ", "대박", "진짜?", "감사합니다",
        "ㅋㅋ", "헐 대박", "와", "ㄷㄷ", "좋아요", "미쳤다", "ㅜㅜ", "아 진짜", "오케이", "넵",
        "굿", "ㅎㅎㅎ", "웃겨", "짜증나", "무서워", "슬프다", "화난다", "놀랐어", "최고", "별로",
        "싫어", "고마워", "미안", "잘자", "안녕", "뭐야", "왜", "아니", "응", "ㅋ",
    ]  # fmt: skip
    weights = [1 / (rank + 1) for rank in range(len(reactions))]
    rng = random.Random(seed)
    base = list(sample_texts())
    return [
        rng.choices(reactions, weights)[0] if rng.random() < 0.5 else f"{rng.choice(base)} #{i}" for i in range(count)
    ]


def _run_load(model: Path, extra: Sequence[str], texts: Sequence[str], concurrency: int) -> dict[str, float]:
    proc, port, _ = start_server(model, ["--drain-s", "0", *extra])
    try:
        result = asyncio.run(_drive(port, texts, concurrency))
        return {**result, "rss_after_mib": round(rss_mib(proc.pid), 1)}
    finally:
        stop_server(proc)


def measure_instances(model: Path, texts_per_run: int, concurrencies: Sequence[int]) -> dict[str, object]:
    layouts = {
        "1x2": ["--instances", "1", "--intra-op-threads", "2"],
        "2x1": ["--instances", "2", "--intra-op-threads", "1"],
    }
    rows = []
    for concurrency in concurrencies:
        texts = bench_texts(texts_per_run if concurrency > 1 else max(texts_per_run // 4, 50))
        for name, flags in layouts.items():
            result = _run_load(model, [*flags, "--cache-size", "0"], texts, concurrency)
            rows.append({"layout": name, "concurrency": concurrency, **result})
            print(json.dumps(rows[-1]), flush=True)
    return {"model": str(model), "rows": rows, "load_average": os.getloadavg()}


def measure_cache(model: Path, count: int, concurrency: int, cache_size: int) -> dict[str, object]:
    texts = chat_texts(count)
    repeats = 1 - len(set(texts)) / len(texts)
    rows = []
    for size in (0, cache_size):
        result = _run_load(model, ["--cache-size", str(size)], texts, concurrency)
        rows.append({"cache_size": size, "concurrency": concurrency, **result})
        print(json.dumps(rows[-1]), flush=True)
    return {
        "model": str(model),
        "texts": count,
        "repeated_share": round(repeats, 3),
        "rows": rows,
        "load_average": os.getloadavg(),
    }


def measure_sessions(model: Path, texts_per_run: int, batch: int) -> dict[str, object]:
    """The model alone, no server: the same batches through 1 session x 2 threads (with and without ONNX Runtime's
    spin-waiting) and 2 sessions x 1 thread (one Python thread each), to tell the layouts apart without the server."""
    import threading

    from gamjeong.onnx_runtime import create_session
    from gamjeong.predictor import load_predictor

    predictor = load_predictor(model)
    encoded = predictor.encode(bench_texts(texts_per_run))
    batches = [encoded[i : i + batch] for i in range(0, len(encoded), batch)]

    def session(threads: int, spinning: bool = True):
        import onnxruntime as ort

        if spinning:
            return create_session(model / "model.onnx", provider="cpu", intra_op_threads=threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(model / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"])

    def run(sessions: list) -> float:
        predictors = []
        for s in sessions:
            p = load_predictor(model)
            p.session = s
            predictors.append(p)
        for p in predictors:
            p.predict_encoded(batches[0])  # warm-up
        work = list(batches)
        lock = threading.Lock()

        def worker(p) -> None:
            while True:
                with lock:
                    if not work:
                        return
                    item = work.pop()
                p.predict_encoded(item)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(p,)) for p in predictors]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return round(len(encoded) / (time.perf_counter() - started), 1)

    rows = {
        "1 session x 1 thread": run([session(1)]),
        "1 session x 2 threads": run([session(2)]),
        "1 session x 2 threads, no spinning": run([session(2, spinning=False)]),
        "2 sessions x 1 thread": run([session(1), session(1)]),
    }
    return {"model": str(model), "batch": batch, "texts_per_s": rows, "load_average": os.getloadavg()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["startup", "instances", "cache", "sessions"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--cache-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    if args.what == "startup":
        result = measure_startup(args.model, args.runs)
    elif args.what == "sessions":
        result = measure_sessions(args.model, args.texts, args.batch)
    elif args.what == "instances":
        result = measure_instances(args.model, args.texts, args.concurrency)
    else:
        result = measure_cache(args.model, args.texts, args.concurrency[-1], args.cache_size)
    print(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
