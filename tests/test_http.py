"""HTTP/JSON and WebSocket beside gRPC (server/http), against a server started in-process on free ports: the same
answers as gRPC for the same texts, every error status, auth, limits, and the WebSocket chat contract."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import websockets
from conftest import KOREAN_SENTENCES
from test_server import GatedPredictor, until
from test_server_security import pki  # noqa: F401  (the throwaway CA and certificates of the gRPC TLS tests)

from gamjeong.clients import AsyncEmotionClient, ChatMessage
from gamjeong.labels import LABEL_NAMES
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

TEXTS = [t for texts in KOREAN_SENTENCES.values() for t in texts]
TOLERANCE = 1e-4  # dynamic int8: a text's probabilities move ~2e-5 with its batch-mates (see test_server.py)
TOKEN = "http-test-token_0123456789"


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture
def make_server(start_server, predictor: Predictor) -> Callable[..., object]:
    async def start(used: Predictor | None = None, **overrides: object) -> GamjeongServer:
        values = {"http_port": 0, "grace_s": 5, "drain_s": 0} | overrides
        return await start_server(lambda: used or predictor, **values)

    return start


def http(server: GamjeongServer, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", headers=headers, timeout=30)


def ws_url(server: GamjeongServer) -> str:
    return f"ws://127.0.0.1:{server.http_port}/v1/chat"


def vector(scores: dict[str, float]) -> np.ndarray:
    return np.array([scores[name] for name in LABEL_NAMES], dtype=np.float32)


async def expect_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], error


def requests_total(server: GamjeongServer, method: str, code: str) -> float:
    return server.metrics.value("gamjeong_requests_total", {"method": method, "code": code})


# --- same answers as gRPC ---------------------------------------------------------------------------------------
async def test_http_answers_what_grpc_answers_for_the_same_texts(make_server) -> None:
    server = await make_server()
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client, http(server) as web:
        expected = await client.classify(TEXTS[:8])
        response = await web.post("/v1/classify", json={"texts": TEXTS[:8]})
        top2 = (await web.post("/v1/classify", json={"texts": TEXTS[:1], "top_k": 2})).json()
        info, grpc_info = (await web.get("/v1/info")).json(), await client.model_info()
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model"] == grpc_info.model_name and body["timing"]["total_ms"] > 0
    assert len(body["results"]) == 8
    for want, got in zip(expected, body["results"], strict=True):
        assert (got["label"], got["label_ko"], got["label_id"]) == (want.label, want.label_ko, want.label_id)
        np.testing.assert_allclose(vector(got["scores"]), vector(want.scores), atol=TOLERANCE)
        assert list(got["scores"].values()) == sorted(got["scores"].values(), reverse=True)
        assert got["score"] == pytest.approx(max(got["scores"].values()))
        assert got["truncated"] is False
        assert got["timing"]["num_tokens"] == want.timing.num_tokens and got["timing"]["batch_size"] >= 1
    assert len(top2["results"][0]["scores"]) == 2
    assert info["model_name"] == grpc_info.model_name and info["backend"] == grpc_info.backend == "onnx-int8"
    assert [label["name_ko"] for label in info["labels"]] == ["기쁨", "슬픔", "분노", "공포", "놀람", "혐오", "중립"]
    assert info["limits"]["max_texts_per_request"] == 64
    # Random weights: the export's parity check scored them at chance level.
    assert info["untrained"] is True and info["quality_source"] == "parity.json"
    assert requests_total(server, "Classify", "OK") == 2 + 1  # HTTP calls count as the RPC they map to


async def test_health_readiness_openapi_and_the_page(make_server) -> None:
    server = await make_server()
    async with http(server) as web:
        assert (await web.get("/healthz")).json() == {"status": "live"}
        ready = await web.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        spec = (await web.get("/openapi.json")).json()
        assert {"/v1/classify", "/v1/info", "/healthz", "/readyz"} <= set(spec["paths"])
        assert (await web.get("/docs")).status_code == 404  # no Swagger UI: its assets come from a CDN
        page = await web.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "감정" in page.text and 'lang="ko"' in page.text
        for asset in ("/static/app.js", "/static/style.css"):
            served = await web.get(asset)
            assert served.status_code == 200
        everything = page.text + (await web.get("/static/app.js")).text + (await web.get("/static/style.css")).text
        assert "https://" not in everything and "http://" not in everything  # nothing from outside: works offline
        missing = await web.get("/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


# --- errors -------------------------------------------------------------------------------------------------------
async def test_every_invalid_request_is_400_with_the_grpc_message(make_server, predictor) -> None:
    server = await make_server(max_texts_per_request=3, max_text_chars=200)
    long_text = "가나다라마바사아자차카타파하 " * 12  # over 64 tokens, under 200 characters
    async with http(server) as web:

        async def post(body: object) -> httpx.Response:
            return await web.post("/v1/classify", json=body)

        await expect_error(await post({"texts": []}), 400, "INVALID_ARGUMENT", "at least one text")
        await expect_error(await post({"texts": ["가"] * 4}), 400, "INVALID_ARGUMENT", "at most 3 texts")
        await expect_error(await post({"texts": ["좋아", " \n"]}), 400, "INVALID_ARGUMENT", "texts[1] is empty")
        await expect_error(await post({"texts": ["\u200b\u3164"]}), 400, "INVALID_ARGUMENT", "texts[0]")
        await expect_error(await post({"texts": ["가" * 201]}), 400, "INVALID_ARGUMENT", "limit of 200")
        await expect_error(
            await post({"texts": ["좋아", long_text], "truncation": "refuse"}),
            400,
            "INVALID_ARGUMENT",
            f"maximum input of {predictor.max_length} tokens",
        )
        await expect_error(await post({"texts": ["좋아"], "truncation": "sometimes"}), 400, "INVALID_ARGUMENT")
        await expect_error(await post({"texts": "좋아"}), 400, "INVALID_ARGUMENT", "texts")
        await expect_error(await post({"texts": ["좋아"], "colour": 1}), 400, "INVALID_ARGUMENT", "colour")
        await expect_error(await post({"texts": ["좋아"], "top_k": -1}), 400, "INVALID_ARGUMENT", "top_k")
        not_json = await web.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
        await expect_error(not_json, 400, "INVALID_ARGUMENT")
        surrogate = b'{"texts": ["\\ud800"]}'
        await expect_error(
            await web.post("/v1/classify", content=surrogate, headers={"content-type": "application/json"}),
            400,
            "INVALID_ARGUMENT",
            "Unicode",
        )
        truncated = (await post({"texts": [long_text]})).json()["results"][0]
        assert truncated["truncated"] is True and truncated["timing"]["num_tokens"] == predictor.max_length
    assert requests_total(server, "Classify", "INVALID_ARGUMENT") == 12


async def test_a_body_over_the_message_limit_is_413_announced_or_chunked(make_server) -> None:
    server = await make_server(max_message_bytes=2048)
    big = {"texts": ["가나다라마바사 " * 200]}
    async with http(server) as web:
        await expect_error(await web.post("/v1/classify", json=big), 413, "RESOURCE_EXHAUSTED", "2048")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            data = json.dumps(big).encode()
            for i in range(0, len(data), 512):
                yield data[i : i + 512]

        chunked = await web.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        await expect_error(chunked, 413, "RESOURCE_EXHAUSTED")
        assert (await web.post("/v1/classify", json={"texts": ["좋아요"]})).status_code == 200


async def test_full_queue_is_429_and_a_passed_timeout_is_504(make_server, predictor) -> None:
    gated = GatedPredictor(predictor)
    server = await make_server(gated, max_queue_size=3, max_texts_per_request=3, max_batch_size=1)
    gated.gate.clear()
    gated.running.clear()
    async with http(server) as web:
        first = asyncio.ensure_future(web.post("/v1/classify", json={"texts": ["첫 번째"]}))
        await until(gated.running.is_set, "the first call to reach the model")
        late = await web.post("/v1/classify", json={"texts": ["늦은 메시지"]}, headers={"x-request-timeout": "0.3"})
        await expect_error(late, 504, "DEADLINE_EXCEEDED")
        queued = asyncio.ensure_future(web.post("/v1/classify", json={"texts": ["둘", "셋", "넷"]}))
        await until(lambda: server.batcher.depth >= 3, "three queued texts")
        await expect_error(
            await web.post("/v1/classify", json={"texts": ["다섯"]}), 429, "RESOURCE_EXHAUSTED", "queue is full"
        )
        bad_timeout = await web.post("/v1/classify", json={"texts": ["좋아"]}, headers={"x-request-timeout": "soon"})
        await expect_error(bad_timeout, 400, "INVALID_ARGUMENT", "x-request-timeout")
        gated.gate.set()
        assert (await first).status_code == 200 and len((await queued).json()["results"]) == 3
    assert requests_total(server, "Classify", "RESOURCE_EXHAUSTED") == 1
    assert requests_total(server, "Classify", "DEADLINE_EXCEEDED") == 1


async def test_while_loading_calls_are_503_and_readyz_says_loading(tiny_int8_dir: Path, predictor) -> None:
    loaded = threading.Event()

    def slow_load() -> Predictor:
        assert loaded.wait(30)
        return predictor

    settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, http_port=0, drain_s=0)
    server = GamjeongServer(settings, predictor_factory=slow_load)
    await server.listen()
    loading = asyncio.ensure_future(server.load_model())
    try:
        async with http(server) as web:
            assert (await web.get("/healthz")).status_code == 200
            ready = await web.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "loading"
            refused = await web.post("/v1/classify", json={"texts": ["안녕"]})
            await expect_error(refused, 503, "UNAVAILABLE", "loading")
            await expect_error(await web.get("/v1/info"), 503, "UNAVAILABLE")
            async with websockets.connect(ws_url(server)) as socket:  # refused as a whole, as the gRPC stream is
                assert json.loads(await socket.recv())["error"]["code"] == "UNAVAILABLE"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await socket.recv()
                assert closed.value.rcvd.code == 1013  # try again later
            loaded.set()
            await loading
            assert (await web.get("/readyz")).status_code == 200
    finally:
        loaded.set()
        await server.stop(0)


async def test_readyz_is_503_while_draining_and_calls_are_still_answered(make_server) -> None:
    server = await make_server(drain_s=1.0)
    async with http(server) as web:
        assert (await web.get("/readyz")).status_code == 200
        stopping = asyncio.ensure_future(server.stop())
        await until(lambda: server._stopping, "shutdown to begin")
        ready = await web.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert (await web.post("/v1/classify", json={"texts": ["아직 받아요"]})).status_code == 200
        await stopping


# --- auth and CORS ------------------------------------------------------------------------------------------------
async def test_the_token_guards_http_and_the_websocket_but_not_the_probes(make_server) -> None:
    server = await make_server(auth_token=TOKEN)
    body = {"texts": ["오늘 정말 행복해요"]}
    async with http(server) as web:
        missing = await web.post("/v1/classify", json=body)
        await expect_error(missing, 401, "UNAUTHENTICATED", "authorization: Bearer")
        assert missing.headers["www-authenticate"] == "Bearer"
        await expect_error(await web.get("/v1/info"), 401, "UNAUTHENTICATED")
        wrong = await web.post("/v1/classify", json=body, headers={"authorization": "Bearer wrong"})
        await expect_error(wrong, 401, "UNAUTHENTICATED")
        for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
            assert (await web.post("/v1/classify", json=body, headers={"authorization": header})).status_code == 200
        assert (await web.get("/healthz")).status_code == 200 and (await web.get("/readyz")).status_code == 200
        assert (await web.get("/")).status_code == 200  # the page itself holds nothing secret; it asks for the token
    assert requests_total(server, "Classify", "UNAUTHENTICATED") == 2

    async with websockets.connect(ws_url(server), additional_headers={"Authorization": f"Bearer {TOKEN}"}) as socket:
        await socket.send(json.dumps({"id": "h", "text": "좋아요"}))
        assert json.loads(await socket.recv())["id"] == "h"
    async with websockets.connect(ws_url(server)) as socket:  # a browser: the token in a first message
        await socket.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert json.loads(await socket.recv()) == {"type": "auth", "ok": True}
        await socket.send(json.dumps({"id": "m", "text": "좋아요"}))
        assert "result" in json.loads(await socket.recv())
    for headers, first in (({}, {"type": "auth", "token": "wrong"}), ({}, {"id": "x", "text": "토큰 없이"})):
        async with websockets.connect(ws_url(server), additional_headers=headers) as socket:
            await socket.send(json.dumps(first))
            assert json.loads(await socket.recv())["error"]["code"] == "UNAUTHENTICATED"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
            assert closed.value.rcvd.code == 1008
    assert requests_total(server, "ClassifyChat", "UNAUTHENTICATED") == 2


async def test_cors_is_off_by_default_and_on_for_the_named_origin(make_server) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    closed, opened = await make_server(), await make_server(cors_origin="https://app.example")
    async with http(closed) as web:
        answer = await web.options("/v1/classify", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    async with http(opened) as web:
        answer = await web.options("/v1/classify", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        other = await web.options("/v1/classify", headers=preflight | {"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- WebSocket chat -----------------------------------------------------------------------------------------------
async def test_websocket_chat_ids_order_and_per_message_errors_keep_the_socket_open(make_server) -> None:
    server = await make_server(max_text_chars=200)
    messages = [{"id": f"m{i}", "conversation_id": f"c{i % 2}", "text": t} for i, t in enumerate(TEXTS[:6])]
    messages.insert(2, {"id": "blank", "text": "  "})
    messages.insert(4, {"id": "huge", "text": "가" * 201})
    messages.insert(5, {"id": "long-id", "text": "좋아", "conversation_id": "c" * 300})
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        grpc_replies = [r async for r in client.chat([ChatMessage(id=m["id"], text=m["text"]) for m in messages[:2]])]
    async with websockets.connect(ws_url(server)) as socket:
        for message in messages:
            await socket.send(json.dumps(message, ensure_ascii=False))
        replies = [json.loads(await socket.recv()) for _ in messages]
        # Frames that are not chat messages are answered at once, and the socket goes on.
        await socket.send("not json")
        assert json.loads(await socket.recv())["error"]["code"] == "INVALID_ARGUMENT"
        await socket.send(json.dumps({"id": "no-text"}))
        answer = json.loads(await socket.recv())
        assert answer["id"] == "no-text" and "text" in answer["error"]["message"]
        await socket.send(json.dumps({"id": "after", "text": "아직 열려 있어요"}))
        assert json.loads(await socket.recv())["id"] == "after"
    # Arrival order, every message answered; an over-long id is never echoed back (gRPC's rule).
    assert [r["id"] for r in replies] == [m["id"] if i != 5 else "" for i, m in enumerate(messages)]
    assert [r["conversation_id"] for r in replies] == [m.get("conversation_id", "") if i != 5 else "" for i, m in enumerate(messages)]  # fmt: skip
    errors = {i: r["error"] for i, r in enumerate(replies) if "error" in r}
    assert set(errors) == {2, 4, 5} and all(e["code"] == "INVALID_ARGUMENT" for e in errors.values())
    assert "empty" in errors[2]["message"] and "200" in errors[4]["message"] and "256 bytes" in errors[5]["message"]
    for want, got in zip(grpc_replies, replies[:2], strict=True):
        assert got["result"]["label"] == want.result.label
        np.testing.assert_allclose(vector(got["result"]["scores"]), vector(want.result.scores), atol=TOLERANCE)
    assert requests_total(server, "ClassifyChat", "OK") == 2  # the gRPC stream and the WebSocket


async def test_websocket_replies_stream_while_the_client_is_still_sending(make_server) -> None:
    server = await make_server()
    async with websockets.connect(ws_url(server)) as socket:
        for i, text in enumerate(TEXTS[:3]):  # the next message only once this one's reply came back
            await socket.send(json.dumps({"id": str(i), "text": text}))
            assert json.loads(await asyncio.wait_for(socket.recv(), 30))["id"] == str(i)


async def test_a_client_that_leaves_mid_chat_is_counted_and_the_server_goes_on(make_server, predictor) -> None:
    gated = GatedPredictor(predictor)
    server = await make_server(gated, max_batch_size=1)
    gated.gate.clear()
    gated.running.clear()
    socket = await websockets.connect(ws_url(server))
    for i in range(3):
        await socket.send(json.dumps({"id": str(i), "text": TEXTS[i]}))
    await until(gated.running.is_set, "the first message to reach the model")
    await socket.close()
    gated.gate.set()
    await until(lambda: requests_total(server, "ClassifyChat", "CANCELLED") + requests_total(server, "ClassifyChat", "OK") == 1, "the chat to end")  # fmt: skip
    async with http(server) as web:
        assert (await web.post("/v1/classify", json={"texts": ["다음"]})).status_code == 200


async def test_http_connections_have_nagle_off(make_server) -> None:
    """Without TCP_NODELAY a response written in two parts waits for the client's delayed ACK: +40 ms a call."""
    import socket

    server = await make_server()
    async with http(server) as web:
        assert (await web.get("/healthz")).status_code == 200
        connections = list(server.http._server.server_state.connections)
        assert connections
        for connection in connections:
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_model_quality_says_untrained_only_with_evidence(tmp_path: Path) -> None:
    from gamjeong.server.http.convert import model_quality

    trained, chance, exported = tmp_path / "trained", tmp_path / "chance", tmp_path / "exported"
    for directory in (trained, chance, exported):
        directory.mkdir()
    (trained / "metrics.json").write_text(json.dumps({"accuracy": 0.56, "macro_f1": 0.485}))
    (chance / "metrics.json").write_text(json.dumps({"accuracy": 0.17, "macro_f1": 0.066}))
    (exported / "manifest.json").write_text(json.dumps({"source": {"model_dir": str(trained)}}))
    assert model_quality(trained) == {
        "macro_f1": 0.485,
        "accuracy": 0.56,
        "untrained": False,
        "quality_source": "metrics.json",
    }
    assert model_quality(exported)["untrained"] is False  # found through the manifest
    assert model_quality(chance)["untrained"] is True
    assert model_quality(tmp_path)["untrained"] is None
    # An export whose trained directory is gone: its parity check scored the served model on labelled texts.
    (exported / "manifest.json").write_text(json.dumps({"source": {"model_dir": str(tmp_path / "gone")}}))
    (exported / "parity.json").write_text(json.dumps({"candidate": {"accuracy": 0.53, "macro_f1": 0.28}}))
    assert model_quality(exported) == {
        "macro_f1": 0.28,
        "accuracy": 0.53,
        "untrained": False,
        "quality_source": "parity.json",
    }


async def test_the_http_port_serves_the_grpc_ports_tls_and_mutual_tls(make_server, pki) -> None:  # noqa: F811
    import ssl

    body = {"texts": ["오늘 정말 행복해요"]}
    server = await make_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    trusting = ssl.create_default_context(cafile=str(pki["ca"]))
    async with httpx.AsyncClient(base_url=f"https://localhost:{server.http_port}", verify=trusting) as web:
        assert (await web.post("/v1/classify", json=body)).status_code == 200
    async with httpx.AsyncClient(base_url=f"https://localhost:{server.http_port}") as web:
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the server's CA
            await web.get("/healthz")

    mutual = await make_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    url = f"https://localhost:{mutual.http_port}"
    async with httpx.AsyncClient(base_url=url, verify=trusting) as web:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await web.get("/healthz")  # no client certificate
    with_certificate = ssl.create_default_context(cafile=str(pki["ca"]))
    with_certificate.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    async with httpx.AsyncClient(base_url=url, verify=with_certificate) as web:
        assert (await web.post("/v1/classify", json=body)).status_code == 200


def test_settings_read_the_http_port_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GAMJEONG_HTTP_PORT", "8089")
    assert load_settings(model=tmp_path).http_port == 8089
    monkeypatch.delenv("GAMJEONG_HTTP_PORT")
    assert load_settings(model=tmp_path).http_port is None  # off unless asked for


async def test_a_taken_http_port_is_a_clear_error(make_server) -> None:
    from gamjeong.errors import GamjeongError

    first = await make_server()
    with pytest.raises(GamjeongError, match="--http-port"):
        await make_server(http_port=first.http_port)


def test_http_status_table_covers_what_the_service_raises() -> None:
    from gamjeong.server.status import http_status

    assert [http_status(c) for c in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)] == [400, 401]
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429 and http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504 and http_status(grpc.StatusCode.INTERNAL) == 500
