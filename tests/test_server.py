"""The gRPC server in-process on a free port: the three classifying RPCs, limits, deadlines, batching, health,
reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import KOREAN_SENTENCES, as_vector
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.clients import AsyncEmotionClient, ChatMessage
from gamjeong.errors import GamjeongError
from gamjeong.labels import LABEL_NAMES, LABEL_NAMES_KO
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.batcher import group_by_length
from gamjeong.server.settings import load_settings

TEXTS = [t for texts in KOREAN_SENTENCES.values() for t in texts]
# The served model is dynamic-int8 ONNX: it quantises activations with the range of the whole batch tensor, so a
# text's probabilities move by ~2e-5 with its batch-mates. Exact batching (1e-5) is checked on PyTorch fp32 below.
TOLERANCE = 1e-4
EXACT_TOLERANCE = 1e-5
SERVICE = "gamjeong.v1.EmotionClassifier"


class GatedPredictor(Predictor):
    """Wraps a real predictor; its model calls wait for `gate`, so a test can hold the model busy on purpose."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner.tokenizer, inner.max_length)
        self.inner = inner
        self.backend, self.device = inner.backend, inner.device
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()  # set when a model call is waiting at (or past) the gate
        self.batch_sizes: list[int] = []

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.running.set()
        assert self.gate.wait(30), "test left the gate closed"
        self.batch_sizes.append(len(input_ids))
        return self.inner.logits(input_ids, attention_mask)


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    """The served predictor: ONNX Runtime on the tiny int8 export."""
    return load_predictor(tiny_int8_dir)


@pytest.fixture(scope="module")
def torch_predictor(tiny_model_dir: Path) -> Predictor:
    """PyTorch fp32: batch-invariant, so batched results must equal unbatched ones to 1e-5."""
    return load_predictor(tiny_model_dir, backend="pytorch")


@pytest.fixture
def gated(predictor: Predictor) -> GatedPredictor:
    return GatedPredictor(predictor)


def alone(predictor: Predictor, text: str) -> np.ndarray:
    """The probabilities of one text run on its own (no batching, no padding)."""
    return predictor.predict_proba([text])[0]


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll an in-process condition (no timing assumptions: only a generous upper bound against hangs)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def make_server(start_server, predictor: Predictor) -> Callable[..., object]:
    """Starts servers on free ports with the given settings and predictor (conftest's start_server stops them)."""

    async def start(predictor_used: Predictor | None = None, *, wait: bool = True, **overrides: object):
        used = predictor_used or predictor
        return await start_server(lambda: used, wait=wait, **({"grace_s": 5} | overrides))

    return start


def client_for(server: GamjeongServer, **options: object) -> AsyncEmotionClient:
    return AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1, **options)


# --- the three classifying RPCs ---------------------------------------------------------------------------------
async def test_classify_returns_one_result_per_text_equal_to_the_model_alone(make_server, predictor) -> None:
    server = await make_server()
    async with client_for(server) as client:
        results = await client.classify(TEXTS[:5])
        top2 = await client.classify(TEXTS[0], top_k=2)
        info = await client.model_info()
    assert len(results) == 5
    for text, result in zip(TEXTS[:5], results, strict=True):
        expected = alone(predictor, text)
        np.testing.assert_allclose(as_vector(result.scores), expected, atol=TOLERANCE)
        assert result.label_id == int(np.argmax(as_vector(result.scores)))
        assert result.label == LABEL_NAMES[result.label_id] and result.label_ko == LABEL_NAMES_KO[result.label_id]
        assert result.score == pytest.approx(max(result.scores.values()))
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert not result.truncated
        assert result.timing.num_tokens == len(predictor.encode([text])[0].input_ids)
        assert result.timing.batch_size >= 1 and result.timing.inference_ns > 0
    assert len(top2[0].scores) == 2 and top2[0].label == max(top2[0].scores, key=top2[0].scores.get)
    assert [name for _, name, _ in info.labels] == list(LABEL_NAMES)
    assert info.backend == predictor.backend and info.max_input_length == predictor.max_length
    assert info.quantization == "int8" and info.execution_provider == "CPUExecutionProvider"
    assert info.backend == "onnx-int8" and info.model_name == "model"
    assert info.limits["max_texts_per_request"] == 64 and info.version


async def test_classify_stream_covers_the_request_in_order(make_server, predictor) -> None:
    server = await make_server(max_batch_size=4)
    texts = TEXTS * 2  # 56 texts: 14 chunks of 4
    stub = pb_grpc.EmotionClassifierStub(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    chunks = [c async for c in stub.ClassifyStream(pb.ClassifyStreamRequest(texts=texts), timeout=60)]
    assert [c.offset for c in chunks] == list(range(0, len(texts), 4))
    async with client_for(server) as client:
        results = [r async for r in client.classify_stream(texts)]
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        np.testing.assert_allclose(as_vector(result.scores), alone(predictor, text), atol=TOLERANCE)


async def test_chat_answers_in_arrival_order_and_survives_a_bad_message(make_server, predictor) -> None:
    server = await make_server()
    messages = [ChatMessage(id=f"m{i}", text=t, conversation_id=f"c{i % 2}") for i, t in enumerate(TEXTS[:6])]
    messages.insert(3, ChatMessage(id="bad", text="   ", conversation_id="c9"))
    async with client_for(server) as client:
        replies = [r async for r in client.chat(messages)]
    assert [r.id for r in replies] == [m.id for m in messages]
    assert [r.conversation_id for r in replies] == [m.conversation_id for m in messages]
    bad = replies[3]
    assert not bad.ok and bad.error_code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in bad.error_message
    for message, reply in zip(messages, replies, strict=True):
        if message.id != "bad":
            assert reply.ok
            np.testing.assert_allclose(as_vector(reply.result.scores), alone(predictor, message.text), atol=TOLERANCE)


async def test_chat_streams_replies_while_the_client_is_still_sending(make_server) -> None:
    server = await make_server()
    replies_seen = asyncio.Queue()

    async def feed() -> AsyncIterator[ChatMessage]:
        for i, text in enumerate(TEXTS[:3]):
            yield ChatMessage(id=str(i), text=text)
            await asyncio.wait_for(replies_seen.get(), 30)  # the next message only once this one's reply came back

    async with client_for(server) as client:
        ids = []
        async for reply in client.chat(feed()):
            ids.append(reply.id)
            replies_seen.put_nowait(reply.id)
    assert ids == ["0", "1", "2"]


# --- limits -------------------------------------------------------------------------------------------------------
async def expect_status(call, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()


async def test_every_invalid_argument(make_server, predictor) -> None:
    server = await make_server(max_texts_per_request=3, max_stream_texts=5, max_text_chars=200)
    long_text = "가나다라마바사아자차카타파하 " * 12  # under the character limit, far over 64 tokens
    assert len(long_text) < 200
    async with client_for(server) as client:
        await expect_status(client.classify([]), grpc.StatusCode.INVALID_ARGUMENT, "at least one text")
        await expect_status(client.classify(["가"] * 4), grpc.StatusCode.INVALID_ARGUMENT, "at most 3 texts")
        await expect_status(client.classify(["좋아", ""]), grpc.StatusCode.INVALID_ARGUMENT, "texts[1] is empty")
        await expect_status(client.classify([" \n\t"]), grpc.StatusCode.INVALID_ARGUMENT, "texts[0] is empty")
        await expect_status(client.classify(["가" * 201]), grpc.StatusCode.INVALID_ARGUMENT, "limit of 200")
        await expect_status(
            client.classify(["좋아", long_text], truncation="refuse"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "texts[1]",
            f"maximum input of {predictor.max_length} tokens",
        )
        truncated = await client.classify(["좋아", long_text])  # the default policy truncates and says so
        assert [r.truncated for r in truncated] == [False, True]
        assert truncated[1].timing.num_tokens == predictor.max_length

        async def consume(texts: list[str], **options: object) -> list[object]:
            return [r async for r in client.classify_stream(texts, **options)]

        await expect_status(consume(["가"] * 6), grpc.StatusCode.INVALID_ARGUMENT, "at most 5 texts")
        await expect_status(consume([]), grpc.StatusCode.INVALID_ARGUMENT, "at least one text")
        await expect_status(consume(["가", ""]), grpc.StatusCode.INVALID_ARGUMENT, "texts[1] is empty")
        await expect_status(
            consume(["가", long_text], truncation="refuse"), grpc.StatusCode.INVALID_ARGUMENT, "texts[1]"
        )
        stub = pb_grpc.EmotionClassifierStub(client.channel)
        refused = [
            r
            async for r in stub.ClassifyChat(
                iter(
                    [
                        pb.ChatMessage(id="long", text=long_text, truncation=pb.TRUNCATION_REFUSE),
                        pb.ChatMessage(id="huge", text="가" * 201),
                        pb.ChatMessage(id="ok", text=long_text),
                    ]
                ),
                timeout=30,
            )
        ]
    assert [r.id for r in refused] == ["long", "huge", "ok"]
    assert refused[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "tokens" in refused[0].error.message
    assert refused[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "200" in refused[1].error.message
    assert refused[2].result.truncated
    assert server.metrics.value("gamjeong_requests_total", {"method": "Classify", "code": "INVALID_ARGUMENT"}) == 6


def test_settings_refuse_inconsistent_limits_and_read_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GAMJEONG_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("GAMJEONG_MAX_WAIT_MS", "2.5")
    settings = load_settings(model=tmp_path, max_wait_ms=1.0)
    assert settings.max_batch_size == 7 and settings.max_wait_ms == 1.0  # env var read; the flag wins over it
    with pytest.raises(GamjeongError, match="max_queue_size"):
        load_settings(model=tmp_path, max_texts_per_request=10, max_queue_size=5)
    with pytest.raises(GamjeongError, match="max_batch_size"):
        load_settings(model=tmp_path, max_batch_size=64, max_queue_size=32, max_texts_per_request=8)
    with pytest.raises(GamjeongError, match="tls-key"):
        load_settings(model=tmp_path, tls_cert=tmp_path / "cert.pem")
    with pytest.raises(GamjeongError, match="truncation"):
        load_settings(model=tmp_path, truncation="sometimes")
    with pytest.raises(GamjeongError, match="model"):
        load_settings()


async def test_a_full_queue_gives_resource_exhausted(make_server, gated) -> None:
    server = await make_server(gated, max_queue_size=3, max_texts_per_request=3, max_batch_size=1)
    gated.gate.clear()
    gated.running.clear()
    async with client_for(server) as client:
        first = asyncio.ensure_future(client.classify(["첫 번째"]))  # taken by the batcher, held at the gate
        await until(gated.running.is_set, "the first call to reach the model")
        queued = asyncio.ensure_future(client.classify(["둘", "셋", "넷"]))  # fills the queue
        await until(lambda: server.batcher.depth == 3, "three queued texts")
        await expect_status(client.classify(["다섯"]), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full", "3 texts")
        replies = [r async for r in client.chat(["여섯"])]
        assert replies[0].error_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        stream = client.classify_stream(["일곱", "여덟"])
        await expect_status(stream.__anext__(), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full")
        gated.gate.set()
        assert len(await first) == 1 and len(await queued) == 3  # the queue drains; nothing was lost
        assert len(await client.classify(["다섯"])) == 1
    assert server.metrics.value("gamjeong_requests_total", {"method": "Classify", "code": "RESOURCE_EXHAUSTED"}) == 1


async def test_expired_and_cancelled_calls_are_dropped_before_the_model_runs(make_server, gated) -> None:
    server = await make_server(gated, max_batch_size=8)
    gated.gate.clear()
    gated.running.clear()
    gated.batch_sizes.clear()
    async with client_for(server) as client:
        first = asyncio.ensure_future(client.classify(["먼저 온 메시지"]))
        await until(gated.running.is_set, "the first call to reach the model")
        await expect_status(client.classify(["늦은 메시지"], timeout=0.3), grpc.StatusCode.DEADLINE_EXCEEDED)
        abandoned = client.stub.Classify(pb.ClassifyRequest(texts=["버려진 메시지", "또 하나"]), timeout=30)
        await until(lambda: server.batcher.depth == 3, "three queued texts")
        abandoned.cancel()
        await until(lambda: server.metrics.value("gamjeong_requests_total", {"method": "Classify", "code": "CANCELLED"}) == 1, "the cancellation to reach the server")  # fmt: skip
        gated.gate.set()
        assert len(await first) == 1
        await until(lambda: server.batcher.depth == 0, "the queue to drain")
        after = await client.classify(["다음 메시지"])  # the batcher is still healthy
    assert len(after) == 1
    assert gated.batch_sizes == [1, 1]  # only the first and the last call ever reached the model
    dropped = sum(
        server.metrics.value("gamjeong_texts_dropped_total", {"reason": r}) for r in ("cancelled", "deadline")
    )
    assert dropped == 3
    assert server.metrics.value("gamjeong_requests_total", {"method": "Classify", "code": "DEADLINE_EXCEEDED"}) == 1


async def test_an_abandoned_stream_is_counted_cancelled_and_the_server_goes_on(make_server) -> None:
    server = await make_server()
    async with client_for(server) as client:
        call = client.stub.ClassifyStream(pb.ClassifyStreamRequest(texts=["긴 작업의 문장"] * 2000), timeout=30)
        first = await call.read()  # a first chunk arrived; then the client walks away
        assert first.offset == 0 and len(first.results) > 0
        call.cancel()
        await until(lambda: server.metrics.value("gamjeong_requests_total", {"method": "ClassifyStream", "code": "CANCELLED"}) == 1, "the cancelled stream to be counted")  # fmt: skip
        assert len(await client.classify(["다음 메시지"])) == 1


# --- batching -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnx-int8", "pytorch-fp32"])
async def test_concurrent_clients_are_batched_and_get_the_unbatched_results(
    backend: str, make_server, predictor, torch_predictor
) -> None:
    predictor, tolerance = (predictor, TOLERANCE) if backend == "onnx-int8" else (torch_predictor, EXACT_TOLERANCE)
    gated = GatedPredictor(predictor)
    server = await make_server(gated, max_batch_size=32, max_wait_ms=20)
    gated.gate.clear()
    gated.running.clear()
    gated.batch_sizes.clear()
    clients = [client_for(server) for _ in range(4)]
    try:
        first = asyncio.ensure_future(clients[0].classify(TEXTS[0]))
        await until(gated.running.is_set, "the first call to reach the model")
        # 27 more texts from 4 clients (unary calls and chat streams) pile up while the model is busy.
        calls = [clients[i % 4].classify(TEXTS[i]) for i in range(1, 20)]
        calls.append(clients[1].classify(TEXTS[20:24]))

        async def chat(messages: list[str]) -> list[object]:
            return [r.result async for r in clients[2].chat(messages)]

        calls.append(chat(TEXTS[24:28]))
        pending = [asyncio.ensure_future(c) for c in calls]
        await until(lambda: server.batcher.depth == 27, "27 queued texts")
        gated.gate.set()
        answers = [await first, *[await p for p in pending]]
    finally:
        for client in clients:
            await client.close()
    results = [r for answer in answers for r in answer]
    assert len(results) == len(TEXTS)
    for text, result in zip(TEXTS, results, strict=True):
        np.testing.assert_allclose(as_vector(result.scores), alone(predictor, text), atol=tolerance)
    assert gated.batch_sizes[0] == 1 and max(gated.batch_sizes) > 1
    assert max(r.timing.batch_size for r in results) > 1
    metrics = server.metrics
    assert metrics.value("gamjeong_batch_size_count") == len(gated.batch_sizes)
    assert metrics.value("gamjeong_batch_size_sum") == len(TEXTS)
    assert metrics.value("gamjeong_texts_classified_total") == len(TEXTS)


def test_groups_respect_batch_size_and_token_budget_and_sort_by_length() -> None:
    lengths = [10, 3, 50, 4, 11, 200]
    groups = group_by_length(lengths, max_batch_size=2, max_batch_tokens=100)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups == [[1, 3], [0, 4], [2], [5]]  # short with short; 2 x 50 > 100; 200 alone over budget
    for group in groups:
        assert len(group) <= 2
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= 100


# --- health, reflection, metrics, shutdown ------------------------------------------------------------------------
async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status


async def test_health_reflection_and_graceful_shutdown(make_server, gated, predictor) -> None:
    loaded = threading.Event()

    def slow_load() -> Predictor:
        assert loaded.wait(30)
        return gated

    # No drain here: this test is about what follows it (test_server_hardening.py covers the drain itself).
    settings = load_settings(model=Path("."), host="127.0.0.1", port=0, metrics_port=0, grace_s=30, drain_s=0)
    server = GamjeongServer(settings, predictor_factory=slow_load)
    await server.listen()
    loading = asyncio.ensure_future(server.load_model())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.EmotionClassifierStub(channel)
    try:
        # Start-up: listening, model not loaded: NOT_SERVING, and calls are refused with UNAVAILABLE.
        assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        await expect_status(
            stub.Classify(pb.ClassifyRequest(texts=["안녕"]), timeout=10), grpc.StatusCode.UNAVAILABLE, "loading"
        )
        loaded.set()
        await loading
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING

        # Reflection lists the service.
        reflection_stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection_stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = [s.name async for a in answers for s in a.list_services_response.service]
        assert SERVICE in listed and "grpc.health.v1.Health" in listed

        # Metrics over HTTP.
        await stub.Classify(pb.ClassifyRequest(texts=["안녕하세요"]), timeout=10)
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read()
        )
        text = body.decode()
        assert 'gamjeong_requests_total{code="OK",method="Classify"} 1.0' in text
        assert "gamjeong_batch_size_bucket" in text and "gamjeong_queue_depth" in text

        # Shutdown: an in-flight call (held in the model) finishes; health says NOT_SERVING; new calls are refused.
        gated.gate.clear()
        gated.running.clear()
        in_flight = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(texts=TEXTS[:3]), timeout=60))
        await until(gated.running.is_set, "the in-flight call to reach the model")
        stopping = asyncio.ensure_future(server.stop())
        await until(lambda: server.health._gracefully_shutting_down, "shutdown to begin")
        late_channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.EmotionClassifierStub(late_channel).Classify(pb.ClassifyRequest(texts=["늦었다"]), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not in_flight.done()
        gated.gate.set()
        response = await in_flight
        assert len(response.results) == 3
        await stopping
        await late_channel.close()
    finally:
        gated.gate.set()
        loaded.set()
        await server.stop(0)
        await channel.close()


def test_model_info_finds_the_base_model_through_the_manifest(tmp_path: Path, predictor) -> None:
    import json

    from gamjeong.server.service import describe_model

    trained, exported = tmp_path / "trained", tmp_path / "exported-v3"
    trained.mkdir()
    exported.mkdir()
    (trained / "metrics.json").write_text(json.dumps({"training": {"base_model": "my-org/korean-bert"}}))
    (exported / "manifest.json").write_text(json.dumps({"source": {"model_dir": str(trained)}}))
    settings = load_settings(model=exported, max_batch_size=16, max_wait_ms=3)
    info = describe_model(exported, predictor, settings)
    assert info.base_model == "my-org/korean-bert" and info.model_name == "exported-v3"
    assert info.limits.max_batch_size == 16 and info.limits.max_wait_ms == 3
    assert info.limits.default_truncation == pb.TRUNCATION_TRUNCATE
    assert describe_model(tmp_path, predictor, settings).base_model == ""


async def test_a_failing_model_call_fails_only_its_own_calls(make_server, predictor) -> None:
    poison = predictor.encode(["독"])[0].input_ids[1]
    assert poison != predictor.tokenizer.unk_token_id  # a token of this text only, not of every unknown word

    class Poisoned(GatedPredictor):
        def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
            if (input_ids == poison).any():
                raise RuntimeError("model exploded")
            return super().logits(input_ids, attention_mask)

    server = await make_server(Poisoned(predictor), max_batch_size=1)
    async with client_for(server) as client:
        await expect_status(client.classify(["독"]), grpc.StatusCode.INTERNAL, "RuntimeError")
        replies = [r async for r in client.chat(["좋아요", "독", "슬퍼요"])]
        assert len(await client.classify(["괜찮아요"])) == 1
    assert [r.ok for r in replies] == [True, False, True]
    assert replies[1].error_code == grpc.StatusCode.INTERNAL
