"""`gamjeong serve --workers N` (issue 20): front ends that hand their texts to one engine process.

In-process first (a front end and an engine endpoint on one event loop, talking over a real Unix socket): answers,
the engine's refusals, cancellation and a lost engine. Then the real thing as a process tree: same answers as one
process, one /metrics that adds every process up, a killed front end restarted with no call failing, and a drain
on SIGTERM that takes every process down within the grace period.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import alive, children, kill_if_running, pump, wait_for

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.engine import InferenceEngine
from gamjeong.server.engine_link import serve_engine
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.settings import load_settings
from gamjeong.server.workers import resolve_workers

TOLERANCE = 1e-4  # dynamic int8: a text's probabilities move by ~2e-5 with its batch-mates
TEXTS = [
    "오늘 정말 행복해요",
    "진짜 화가 나서 못 참겠어",
    "밤길이 너무 무서워요",
    "헐 이게 진짜야?",
    "점심은 김밥을 먹었다",
]


class GatedPredictor(Predictor):
    """A real predictor whose model calls wait for `gate`, and that counts the texts it ran."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner.tokenizer, inner.max_length)
        self.inner = inner
        self.backend, self.device, self.precision = inner.backend, inner.device, inner.precision
        self.gate = threading.Event()
        self.gate.set()
        self.texts_run = 0

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        assert self.gate.wait(30), "test left the gate closed"
        self.texts_run += len(input_ids)
        return self.inner.logits(input_ids, attention_mask)


def _vector(result: pb.EmotionResult) -> np.ndarray:
    vector = np.zeros(7, dtype=np.float32)
    for score in result.scores:
        vector[score.label_id] = score.score
    return vector


def test_workers_auto_is_one_process_on_a_cpu_and_half_the_cpus_on_a_gpu(tiny_int8_dir: Path) -> None:
    on = dict(model=tiny_int8_dir)
    assert resolve_workers(load_settings(**on, device="cpu")) == 1
    assert resolve_workers(load_settings(**on, device="cpu", workers=3)) == 3
    assert resolve_workers(load_settings(**on, device="cuda"), cpus=16) == 8
    assert resolve_workers(load_settings(**on, device="cuda"), cpus=64) == 8
    assert resolve_workers(load_settings(**on, device="cuda"), cpus=2) == 2


async def until(condition, what: str, timeout: float = 30.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def front_settings() -> dict[str, object]:
    """Settings of the front end only (a test overrides it: auth, cache)."""
    return {}


@pytest.fixture
async def linked(tiny_int8_dir: Path, tmp_path: Path, front_settings: dict[str, object]):
    """An engine (gated model) behind a Unix socket and a front end in front of it, both on this event loop."""
    gated = GatedPredictor(load_predictor(tiny_int8_dir))
    settings = load_settings(
        model=tiny_int8_dir,
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        max_queue_size=8,
        max_texts_per_request=8,
        max_batch_size=4,
    )
    metrics = ServerMetrics()
    engine = InferenceEngine(settings, metrics, predictor_factory=lambda: gated)
    attachment = await engine.load()
    gated.texts_run = 0  # the warm-up and the cost measurement ran the model too
    socket_path = str(tmp_path / "engine.sock")
    endpoint = await serve_engine(socket_path, attachment, tiny_int8_dir)
    front = GamjeongServer(settings.model_copy(update=front_settings), engine_socket=socket_path)
    await front.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{front.port}")
    state = {"engine": engine, "metrics": metrics, "gated": gated, "front": front, "endpoint": endpoint}
    state |= {"stub": pb_grpc.EmotionClassifierStub(channel), "health": health_pb2_grpc.HealthStub(channel)}
    state |= {"path": socket_path, "attachment": attachment}
    yield state
    gated.gate.set()
    await channel.close()
    await front.stop(0)
    endpoint.close()
    await state["engine"].stop()


async def test_a_front_end_answers_what_the_model_answers_and_says_which_model(linked, tiny_int8_dir: Path) -> None:
    reference = load_predictor(tiny_int8_dir)
    response = await linked["stub"].Classify(pb.ClassifyRequest(texts=TEXTS), timeout=10)
    for text, result in zip(TEXTS, response.results, strict=True):
        np.testing.assert_allclose(_vector(result), reference.predict_proba([text])[0], atol=TOLERANCE)
        assert result.timing.num_tokens == len(reference.encode([text])[0].input_ids)
        assert result.timing.batch_size >= 1
    info = await linked["stub"].GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info == linked["attachment"].model_info and info.backend == reference.backend
    stream = [r async for r in linked["stub"].ClassifyStream(pb.ClassifyStreamRequest(texts=TEXTS * 20), timeout=10)]
    assert sum(len(r.results) for r in stream) == 100
    assert linked["metrics"].value("gamjeong_texts_classified_total") == 105  # counted where the model runs


@pytest.mark.parametrize("front_settings", [{"auth_token": "s3cret", "cache_size": 100}])
async def test_a_front_end_keeps_its_auth_and_its_cache(linked) -> None:
    stub, gated = linked["stub"], linked["gated"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Classify(pb.ClassifyRequest(texts=["안녕"]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = (("authorization", "Bearer s3cret"),)
    first = await stub.Classify(pb.ClassifyRequest(texts=["안녕"]), timeout=5, metadata=token)
    again = await stub.Classify(pb.ClassifyRequest(texts=["안녕"]), timeout=5, metadata=token)
    assert not first.results[0].timing.cache_hit and again.results[0].timing.cache_hit
    assert again.results[0].scores == first.results[0].scores
    assert gated.texts_run == 1  # the repeat never left the front end


async def test_the_engine_refusals_and_dropped_calls_reach_the_front_end(linked) -> None:
    gated, stub = linked["gated"], linked["stub"]
    gated.gate.clear()
    held = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(texts=["첫 번째"]), timeout=30))
    await until(lambda: linked["engine"].batcher.depth == 0 and not gated.gate.is_set(), "the model held")
    await asyncio.sleep(0.05)  # the held call is at the gate (nothing queued, nothing done)
    assert not held.done()
    queued = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(texts=["대기"] * 8), timeout=30))
    await until(lambda: linked["engine"].batcher.depth == 8, "eight queued texts at the engine")
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await stub.Classify(pb.ClassifyRequest(texts=["넘침"]), timeout=10)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in full.value.details()
    # A call that goes away while queued: its texts are dropped at the engine, never run.
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.sleep(0.2)  # the cancel travels to the engine
    gated.gate.set()
    assert len((await held).results) == 1
    await until(lambda: linked["metrics"].value("gamjeong_texts_dropped_total", {"reason": "cancelled"}) == 8, "drops")
    assert gated.texts_run == 1  # the held text ran; the eight cancelled ones never reached the model


async def test_a_lost_engine_means_not_serving_and_unavailable_until_it_is_back(linked, tiny_int8_dir) -> None:
    stub, health = linked["stub"], linked["health"]
    linked["endpoint"].close()  # as when the engine process dies: the socket is closed under the front end
    await until(lambda: linked["front"].servicer.batcher is not None and not linked["front"]._link.connected, "loss")
    await asyncio.sleep(0.05)
    status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await stub.Classify(pb.ClassifyRequest(texts=["안녕"]), timeout=5)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and "model process" in lost.value.details()
    # The engine is back (as the supervisor restarts it): the front end reconnects by itself.
    Path(linked["path"]).unlink(missing_ok=True)
    linked["endpoint"] = await serve_engine(linked["path"], linked["attachment"], tiny_int8_dir)
    for _ in range(300):
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.02)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert len((await stub.Classify(pb.ClassifyRequest(texts=["다시 안녕"]), timeout=5)).results) == 1


# --- the process tree -------------------------------------------------------------------------------------------
def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_workers_answer_alike_add_up_survive_a_dead_front_end_and_drain_together(tiny_int8_dir: Path) -> None:
    grace_s, drain_s = 3.0, 0.5
    command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(tiny_int8_dir), "--host", "127.0.0.1"]
    command += ["--port", "0", "--metrics-port", "0", "--workers", "2", "--log-format", "json"]
    command += ["--grace-s", str(grace_s), "--drain-s", str(drain_s), "--instances", "1", "--no-solo"]
    command += ["--http-port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = pump(process.stderr, lines)
    try:
        listening = wait_for(lines, "listening")
        port, metrics_port = listening["port"], None
        wait_for(lines, "model ready")
        metrics_port = next(json.loads(line)["port"] for line in lines if '"metrics endpoint listening"' in line)
        reference = load_predictor(tiny_int8_dir)
        # Many connections, so that both front ends take some (the kernel spreads connections over them).
        calls = 0
        for _ in range(12):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.EmotionClassifierStub(channel)
                results = stub.Classify(pb.ClassifyRequest(texts=TEXTS), timeout=10).results
                calls += 1
                for text, result in zip(TEXTS, results, strict=True):
                    expected = reference.predict_proba([text])[0]
                    np.testing.assert_allclose(_vector(result), expected, atol=TOLERANCE)
        http = httpx.post(f"http://127.0.0.1:{listening['http_port']}/v1/classify", json={"texts": TEXTS}, timeout=10)
        assert http.status_code == 200, http.text
        for text, result in zip(TEXTS, http.json()["results"], strict=True):
            scores = [result["scores"][name] for name in ("joy", "sadness", "anger", "fear", "surprise", "disgust")]
            np.testing.assert_allclose(scores, reference.predict_proba([text])[0][:6], atol=TOLERANCE)
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert _metric(scrape, 'gamjeong_requests_total{code="OK",method="Classify"}') == calls + 1  # + HTTP's
        assert _metric(scrape, "gamjeong_texts_classified_total") == (calls + 1) * len(TEXTS)
        assert _metric(scrape, "gamjeong_model_instances") == 1
        assert _metric(scrape, "process_cpu_seconds_total") > 0

        # A front end dies: calls go on (the others, then its replacement, take them) and it is restarted.
        workers = children(process.pid)
        front_ends = [pid for pid in workers if pid != _engine_pid(workers)]
        assert len(front_ends) == 2, workers
        os.kill(front_ends[0], signal.SIGKILL)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmotionClassifierStub(channel)
            for _ in range(30):
                assert stub.Classify(pb.ClassifyRequest(texts=TEXTS[:1]), timeout=10, wait_for_ready=True).results
        wait_for(lines, "worker serving again")
        assert len(children(process.pid)) == 3

        # SIGTERM: every front end drains (NOT_SERVING to new probes, still answering), then all of it exits.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmotionClassifierStub(channel)
            stub.Classify(pb.ClassifyRequest(texts=TEXTS[:1]), timeout=10)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(drain_s / 2)
            for _ in range(4):  # new connections, to whichever front end the kernel picks
                with grpc.insecure_channel(f"127.0.0.1:{port}") as probe:
                    check = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert process.wait(timeout=30) == 0
            elapsed = time.monotonic() - signalled
    finally:
        kill_if_running(process)
    reader.join(10)
    assert elapsed <= grace_s + 1.5, f"exited {elapsed:.2f} s after SIGTERM\n{''.join(lines)}"
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its supervisor"
    for line in lines:
        json.loads(line)  # every line JSON: nothing printed around the logs


def _engine_pid(children: list[int]) -> int:
    """The engine is the child started first (its pid is the lowest of the three)."""
    return min(children)
