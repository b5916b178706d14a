"""What an outside probe found (issue 12), in-process: malformed request bytes, invisible or unknown inputs, over-long
chat ids, the bearer scheme's case and duplicate headers, what GetModelInfo reveals and trusts, where the metrics
endpoint listens and who may read it, and draining on shutdown."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.clients import AsyncEmotionClient
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

SERVICE = "gamjeong.v1.EmotionClassifier"
TOKEN = "s3cret-token_0123456789"
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture
def make_server(start_server, predictor: Predictor) -> Callable[..., object]:
    async def start(**overrides: object) -> GamjeongServer:
        return await start_server(lambda: predictor, **overrides)

    return start


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


def requests_total(server: GamjeongServer, method: str, code: str) -> float:
    return server.metrics.value("gamjeong_requests_total", {"method": method, "code": code})


# --- 4: bad request bytes ------------------------------------------------------------------------------------------
NOT_A_MESSAGE = b"\xff\xff\xff\xff"  # a field number of 0 and a truncated varint: no protobuf parser accepts it
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (texts / id), length 2, bytes that are not UTF-8


async def test_undecodable_requests_are_invalid_argument_with_a_plain_message_and_counted(make_server) -> None:
    server = await make_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        classify = channel.unary_unary(f"/{SERVICE}/Classify")  # no serializers: raw bytes on the wire
        stream = channel.unary_stream(f"/{SERVICE}/ClassifyStream")
        chat = channel.stream_stream(f"/{SERVICE}/ClassifyChat")
        answers = [
            await status_of(classify(NOT_A_MESSAGE, timeout=10)),
            await status_of(classify(BAD_UTF8, timeout=10)),
            await status_of(_drain(stream(BAD_UTF8, timeout=10))),
            await status_of(_drain(chat(iter([BAD_UTF8]), timeout=10))),
        ]
        good = pb.ClassifyRequest(texts=["오늘 정말 행복해요"]).SerializeToString()
        assert pb.ClassifyResponse.FromString(await classify(good, timeout=10)).results  # the server goes on
    for code, details in answers:
        assert code == INVALID_ARGUMENT, details
        assert "not a valid" in details and "Error" not in details  # a sentence, no Python class name
    assert requests_total(server, "Classify", "INVALID_ARGUMENT") == 2
    assert requests_total(server, "ClassifyStream", "INVALID_ARGUMENT") == 1
    assert requests_total(server, "ClassifyChat", "INVALID_ARGUMENT") == 1


async def _drain(call) -> list[object]:
    return [item async for item in call]


# --- 5: input validation -------------------------------------------------------------------------------------------
async def test_invisible_texts_unknown_truncation_and_long_chat_ids_are_refused(make_server) -> None:
    server = await make_server()
    invisible = "\u200b\ufeff\u2060 \u3164"  # zero-width space, BOM, word joiner, a space, Hangul filler
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        stub = pb_grpc.EmotionClassifierStub(client.channel)
        code, details = await status_of(stub.Classify(pb.ClassifyRequest(texts=["좋아", invisible]), timeout=10))
        assert code == INVALID_ARGUMENT and "texts[1] is empty" in details
        code, details = await status_of(stub.Classify(pb.ClassifyRequest(texts=["좋아"], truncation=7), timeout=10))
        assert code == INVALID_ARGUMENT and "truncation" in details
        code, _ = await status_of(_drain(stub.ClassifyStream(pb.ClassifyStreamRequest(texts=[invisible]), timeout=10)))
        assert code == INVALID_ARGUMENT
        long_id = "가" * 100  # 300 bytes of UTF-8
        messages = [
            pb.ChatMessage(id="zw", text="\u200b\u200b"),
            pb.ChatMessage(id="t9", text="좋아", truncation=9),
            pb.ChatMessage(id=long_id, text="좋아"),
            pb.ChatMessage(id="c", conversation_id="x" * 257, text="좋아"),
            pb.ChatMessage(id="ok", text="좋아", conversation_id="room"),
        ]
        replies = await _drain(stub.ClassifyChat(iter(messages), timeout=10))
    assert [r.WhichOneof("outcome") for r in replies] == ["error", "error", "error", "error", "result"]
    assert all(r.error.code == INVALID_ARGUMENT.value[0] for r in replies[:4])
    assert "empty" in replies[0].error.message and "truncation" in replies[1].error.message
    assert "256 bytes" in replies[2].error.message and "256 bytes" in replies[3].error.message
    assert replies[2].id == "" and replies[3].conversation_id == ""  # never echoed back
    assert replies[4].id == "ok" and replies[4].conversation_id == "room"


# --- 6: bearer scheme ----------------------------------------------------------------------------------------------
async def test_bearer_scheme_is_case_insensitive_and_two_authorization_headers_are_refused(make_server) -> None:
    server = await make_server(auth_token=TOKEN)
    request = pb.ClassifyRequest(texts=["오늘 정말 행복해요"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.EmotionClassifierStub(channel)
        for header in (f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}"):
            assert (await stub.Classify(request, metadata=(("authorization", header),), timeout=10)).results
        for metadata in (
            (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
            (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")),
            (("authorization", f"Basic {TOKEN}"),),
            (("authorization", TOKEN),),
        ):
            code, _ = await status_of(stub.Classify(request, metadata=metadata, timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED, metadata


# --- 7: what GetModelInfo says -------------------------------------------------------------------------------------
def test_model_info_names_the_base_model_without_a_path(tmp_path: Path, predictor: Predictor) -> None:
    from gamjeong.server.service import describe_model

    trained, exported = tmp_path / "trained", tmp_path / "exported"
    trained.mkdir()
    exported.mkdir()
    (trained / "metrics.json").write_text(json.dumps({"training": {"base_model": "/home/trainer/models/klue-bert"}}))
    (exported / "manifest.json").write_text(
        json.dumps({"source": {"model_dir": str(trained)}, "model_name": "/srv/models/reviews-int8"})
    )
    info = describe_model(exported, predictor, load_settings(model=exported))
    assert info.base_model == "klue-bert" and info.model_name == "reviews-int8"
    (trained / "metrics.json").write_text(json.dumps({"training": {"base_model": "C:\\Users\\me\\kobert"}}))
    assert describe_model(exported, predictor, load_settings(model=exported)).base_model == "kobert"
    (trained / "metrics.json").write_text(json.dumps({"training": {"base_model": "my-org/korean-bert"}}))
    assert describe_model(exported, predictor, load_settings(model=exported)).base_model == "my-org/korean-bert"


def test_the_quantisation_comes_from_the_graph_not_the_manifest(tiny_int8_dir: Path, tmp_path: Path) -> None:
    lying = tmp_path / "lying"
    shutil.copytree(tiny_int8_dir, lying)
    manifest = json.loads((lying / "manifest.json").read_text())
    manifest["quantization"] = {"mode": "none"}  # the manifest does not cover itself: any text editor can do this
    (lying / "manifest.json").write_text(json.dumps(manifest))
    assert load_predictor(lying).backend == "onnx-int8"


def test_graph_precision_reads_operator_and_weight_types(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gamjeong.onnx_runtime import graph_precision

    def save(name: str, node: onnx.NodeProto, weight: np.ndarray) -> Path:
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [numpy_helper.from_array(weight, "w")],
        )
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    assert graph_precision(save("fp32", helper.make_node("Add", ["x", "w"], ["y"]), np.ones(1, np.float32))) == "fp32"
    assert graph_precision(save("fp16", helper.make_node("Add", ["x", "w"], ["y"]), np.ones(1, np.float16))) == "fp16"
    int8 = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
    assert graph_precision(save("int8", int8, np.ones(1, np.int8))) == "int8"


# --- 1: the metrics endpoint ---------------------------------------------------------------------------------------
def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return -1  # connection refused: nothing listens on that address


async def test_metrics_listen_on_the_grpc_host_unless_told_and_need_the_token(make_server) -> None:
    # 127.0.0.2 is loopback too: a socket bound to 0.0.0.0 answers there, one bound to 127.0.0.1 does not.
    default = await make_server(metrics_port=0)
    assert await asyncio.to_thread(_get, f"http://127.0.0.1:{default.metrics_port}/metrics") == 200
    assert await asyncio.to_thread(_get, f"http://127.0.0.2:{default.metrics_port}/metrics") == -1
    everywhere = await make_server(metrics_port=0, metrics_host="0.0.0.0")
    assert await asyncio.to_thread(_get, f"http://127.0.0.2:{everywhere.metrics_port}/metrics") == 200
    guarded = await make_server(metrics_port=0, auth_token=TOKEN)
    url = f"http://127.0.0.1:{guarded.metrics_port}/metrics"
    assert await asyncio.to_thread(_get, url) == 401
    assert await asyncio.to_thread(_get, url, "wrong") == 401
    assert await asyncio.to_thread(_get, url, TOKEN) == 200


# --- 2: draining ---------------------------------------------------------------------------------------------------
async def _health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:  # a new connection, as a load balancer's probe makes
        stub = health_pb2_grpc.HealthStub(channel)
        return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status


async def test_shutdown_reports_not_serving_while_still_answering_then_stops(make_server) -> None:
    server = await make_server(drain_s=1.5, grace_s=5)
    target = f"127.0.0.1:{server.port}"
    assert await _health(target) == health_pb2.HealthCheckResponse.SERVING
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0.2)
    # Draining: new probes get NOT_SERVING (not "connection refused"), and traffic still in the pipe is served.
    assert await _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with AsyncEmotionClient(target, max_attempts=1) as client:
        assert len(await client.classify(["아직 받아요"])) == 1
    assert loop.time() - started < 1.5
    await stopping
    assert 1.5 <= loop.time() - started < 5
    code, _ = await status_of(_health(target))
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_a_server_that_never_served_skips_the_drain(tiny_int8_dir: Path) -> None:
    settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, drain_s=5, grace_s=10)
    server = GamjeongServer(settings, predictor_factory=lambda: None)  # type: ignore[arg-type,return-value]
    await server.listen()  # SIGTERM while the model is still loading: health has never said SERVING
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop()
    assert loop.time() - started < 2


# --- 8: logs and tasks ---------------------------------------------------------------------------------------------
async def test_a_chat_cut_by_shutdown_leaves_no_task_behind(make_server, caplog) -> None:
    import gc

    server = await make_server(grace_s=0.3, drain_s=0)
    hold = asyncio.Event()

    async def feed() -> AsyncIterator[pb.ChatMessage]:
        yield pb.ChatMessage(id="1", text="안녕하세요")
        await hold.wait()  # the client keeps the conversation open

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    chat = pb_grpc.EmotionClassifierStub(channel).ClassifyChat(feed(), timeout=30)
    assert (await chat.read()).id == "1"
    await server.stop()  # the grace period runs out with the chat still open: gRPC cancels it
    hold.set()
    await channel.close()
    for _ in range(3):
        await asyncio.sleep(0.05)
        gc.collect()
    leftovers = [t for t in asyncio.all_tasks() if "ClassifyChat" in repr(t.get_coro())]
    assert not leftovers, leftovers
    noise = [r.getMessage() for r in caplog.records if r.name == "asyncio" or "CancelledError" in r.getMessage()]
    assert not noise, noise


def test_json_logging_takes_every_logger_warnings_and_unraisable_exceptions(capsys) -> None:
    import logging
    import sys
    import warnings

    from gamjeong.server.logs import structured_logging

    with structured_logging("json", "info"):
        logging.getLogger("gamjeong.server.app").info("ours", extra={"port": 1})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("grpc._cython.cygrpc").exception("Unexpected [ValueError] raised by servicer method")
        logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        sys.unraisablehook(type("Args", (), {"exc_type": RuntimeError, "exc_value": RuntimeError("late"),
                                             "exc_traceback": None, "err_msg": "Exception ignored in", "object": None})())  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line parses
    by_logger = {e["logger"]: e for e in entries}
    assert by_logger["gamjeong.server.app"]["port"] == 1
    assert "ValueError: boom" in by_logger["grpc._cython.cygrpc"]["exception"]
    assert "asyncio" in by_logger and "py.warnings" in by_logger
    assert "RuntimeError: late" in by_logger["gamjeong.unraisable"]["exception"]
