"""The Open Inference Protocol (KServe v2) beside gamjeong's own API, proven with Triton's own clients (tritonclient's
gRPC and HTTP clients with their defaults: raw tensor contents over gRPC, the binary tensor extension over HTTP)
against a server started in-process: metadata, readiness, answers equal to Classify's, every bad request, auth."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import KOREAN_SENTENCES, as_vector
from test_server import until

from gamjeong.clients import AsyncEmotionClient
from gamjeong.labels import LABEL_NAMES, NUM_LABELS
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

grpcclient = pytest.importorskip("tritonclient.grpc.aio")
httpclient = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXTS = [t for texts in KOREAN_SENTENCES.values() for t in texts]
TOLERANCE = 1e-4  # dynamic int8: a text's probabilities move ~2e-5 with its batch-mates (see test_server.py)
TOKEN = "oip-test-token_0123456789"
MODEL = "model"  # GetModelInfo's model_name of the tiny export (its directory's name)


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture
def make_server(start_server, predictor: Predictor) -> Callable[..., object]:
    async def start(**overrides: object) -> GamjeongServer:
        return await start_server(lambda: predictor, **({"http_port": 0, "grace_s": 5, "drain_s": 0} | overrides))

    return start


def clients(server: GamjeongServer) -> tuple[object, object]:
    return (
        grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}"),
        httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}"),
    )


def text_input(texts: list[str] | np.ndarray, module=grpcclient, name: str = "text", datatype: str = "BYTES"):
    data = texts if isinstance(texts, np.ndarray) else np.array([t.encode() for t in texts], dtype=np.object_)
    tensor = module.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


async def ours_classify(server: GamjeongServer) -> list:
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as ours:
        return await ours.classify(TEXTS[:1])


async def infer_both(server: GamjeongServer, texts: list[str], **kwargs: object) -> list[tuple[np.ndarray, list[str]]]:
    """(probabilities, labels) from the default gRPC client, the default HTTP client (binary) and HTTP with JSON."""
    grpc_client, http_client = clients(server)
    answers = []
    try:
        for client, module, options in (
            (grpc_client, grpcclient, {}),
            (http_client, httpclient, {}),
            (
                http_client,
                httpclient,
                {
                    "outputs": [
                        httpclient.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")
                    ]
                },
            ),
        ):
            tensor = text_input(texts, module)
            if module is httpclient and options:
                tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=False)
            result = await client.infer(MODEL, [tensor], **options, **kwargs)
            labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
            answers.append((result.as_numpy("probabilities"), labels))
    finally:
        await grpc_client.close()
        await http_client.close()
    return answers


# --- metadata and readiness -------------------------------------------------------------------------------------
async def test_metadata_and_readiness_over_grpc_and_http(make_server) -> None:
    server = await make_server()
    grpc_client, http_client = clients(server)
    try:
        for client in (grpc_client, http_client):
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready(MODEL)
        meta = await grpc_client.get_model_metadata(MODEL, as_json=True)
        web_meta = await http_client.get_model_metadata(MODEL)
        server_meta = await http_client.get_server_metadata()
        grpc_server_meta = await grpc_client.get_server_metadata(as_json=True)
        # every answer says which model answered, in the response's parameters
        grpc_answer = (await grpc_client.infer(MODEL, [text_input(TEXTS[:1], grpcclient)])).get_response()
        http_answer = (await http_client.infer(MODEL, [text_input(TEXTS[:1], httpclient)])).get_response()
    finally:
        await grpc_client.close()
        await http_client.close()
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as ours:
        info = await ours.model_info()
    for m in (meta, web_meta):
        assert m["name"] == info.model_name == MODEL
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in m["inputs"]] == [
            ("text", "BYTES", [-1])
        ]
        outputs = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in m["outputs"]]
        assert outputs == [("probabilities", "FP32", [-1, NUM_LABELS]), ("label", "BYTES", [-1])]
    assert web_meta["parameters"]["labels"].split(",") == list(LABEL_NAMES)
    assert web_meta["parameters"]["max_texts_per_request"] == 64
    # the serving model's version (manifest sha256) and export time, as GetModelInfo says
    assert info.model_version and web_meta["parameters"]["model_version"] == info.model_version
    assert (await ours_classify(server))[0].model_version == info.model_version  # the client's results say it too
    assert web_meta["parameters"]["exported_at"] == info.exported_at != ""
    assert grpc_answer.parameters["model_version"].string_param == info.model_version
    assert http_answer["parameters"]["model_version"] == info.model_version
    assert server_meta["name"] == grpc_server_meta["name"] == "gamjeong"
    assert "binary_tensor_data" in server_meta["extensions"]


async def test_grpc_model_metadata_carries_the_labels_and_reflection_describes_the_service(make_server) -> None:
    """tritonclient's copy of the proto predates ModelMetadataResponse.properties; gamjeong's own stubs read them."""
    import grpc
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from gamjeong.api.inference import open_inference_grpc_pb2 as oip
    from gamjeong.api.inference import open_inference_grpc_pb2_grpc as oip_grpc

    server = await make_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        meta = await oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(oip.ModelMetadataRequest(name=MODEL))
    assert meta.properties["labels"].split(",") == list(LABEL_NAMES) and meta.versions == ["1"]
    assert len(meta.properties["model_version"]) == 16  # the manifest's sha256, 16 hex digits
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # the reflection client is synchronous
        database = ProtoReflectionDescriptorDatabase(channel)
        services = await asyncio.to_thread(database.get_services)
        described = await asyncio.to_thread(
            descriptor_pool.DescriptorPool(database).FindServiceByName, "inference.GRPCInferenceService"
        )
    assert {"inference.GRPCInferenceService", "gamjeong.v1.EmotionClassifier"} <= set(services)
    assert "ModelInfer" in described.methods_by_name


async def test_readiness_follows_loading_and_draining_and_calls_wait_for_the_model(tiny_int8_dir, predictor) -> None:
    loaded = threading.Event()

    def slow_load() -> Predictor:
        assert loaded.wait(30)
        return predictor

    settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, http_port=0, drain_s=1.0)
    server = GamjeongServer(settings, predictor_factory=slow_load)
    await server.listen()
    loading = asyncio.ensure_future(server.load_model())
    grpc_client, http_client = clients(server)
    try:
        for client in (grpc_client, http_client):
            assert await client.is_server_live() and not await client.is_server_ready()
            assert not await client.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException) as caught:
            await grpc_client.infer(MODEL, [text_input(["안녕"])])
        assert caught.value.status() == "StatusCode.UNAVAILABLE" and "loading" in caught.value.message()
        loaded.set()
        await loading
        assert await grpc_client.is_server_ready() and await http_client.is_model_ready(MODEL)
        stopping = asyncio.ensure_future(server.stop())
        await until(lambda: server._stopping, "shutdown to begin")
        for client, module in ((grpc_client, grpcclient), (http_client, httpclient)):
            assert not await client.is_server_ready() and not await client.is_model_ready(MODEL)
            result = await client.infer(MODEL, [text_input(["아직 받아요"], module)])  # the drain still answers
            assert result.as_numpy("probabilities").shape == (1, NUM_LABELS)
        await stopping
    finally:
        loaded.set()
        await grpc_client.close()
        await http_client.close()
        await server.stop(0)


# --- inference: the same answers as Classify --------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 64])
async def test_infer_answers_what_classify_answers(make_server, count: int) -> None:
    server = await make_server()
    texts = [TEXTS[i % len(TEXTS)] + (f" {i}" if i >= len(TEXTS) else "") for i in range(count)]
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as ours:
        expected = await ours.classify(texts)
    want = np.stack([as_vector(r.scores) for r in expected])
    for probabilities, labels in await infer_both(server, texts):
        assert probabilities.dtype == np.float32 and probabilities.shape == (count, NUM_LABELS)
        np.testing.assert_allclose(probabilities, want, atol=TOLERANCE)
        clear = np.sort(want, axis=1)[:, -1] - np.sort(want, axis=1)[:, -2] > 2 * TOLERANCE  # no near-tie to flip
        assert [g for g, c in zip(labels, clear, strict=True) if c] == [
            r.label for r, c in zip(expected, clear, strict=True) if c
        ]
    assert server.metrics.value("gamjeong_requests_total", {"method": "ModelInfer", "code": "OK"}) == 3


async def test_infer_uses_the_result_cache_and_the_requested_outputs(make_server) -> None:
    server = await make_server(cache_size=100)
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as ours:
        expected = await ours.classify(TEXTS[:3])
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        only = await grpc_client.infer(
            MODEL, [text_input(TEXTS[:3])], outputs=[grpcclient.InferRequestedOutput("probabilities")]
        )
    finally:
        await grpc_client.close()
    # From the cache: exactly Classify's numbers, and only the output asked for.
    assert np.array_equal(only.as_numpy("probabilities"), np.stack([as_vector(r.scores) for r in expected]))
    assert only.as_numpy("label") is None
    assert server.metrics.value("gamjeong_cache_lookups_total", {"result": "hit"}) == 3


# --- bad requests -----------------------------------------------------------------------------------------------
BAD = {
    "wrong input name": (lambda m: [text_input(["안녕"], m, name="texts")], {}, "takes one input, 'text'"),
    "wrong datatype": (
        lambda m: [text_input(np.array([1.0], dtype=np.float32), m, datatype="FP32")],
        {},
        "must be BYTES",
    ),
    "wrong shape": (
        lambda m: [text_input(np.array([["안녕".encode()]], dtype=np.object_), m)],
        {},
        "shape [N] (one dimension)",
    ),
    "bytes not UTF-8": (
        lambda m: [text_input(np.array([b"ok", b"\xff\xfe"], dtype=np.object_), m)],
        {},
        "text[1] is not valid UTF-8",
    ),
    "blank text": (lambda m: [text_input(["   "], m)], {}, "text[0] is empty"),
    "wrong output name": (
        lambda m: [text_input(["안녕"], m)],
        {"outputs": "nope"},
        "Unknown output 'nope'",
    ),
    "unknown model": (lambda m: [text_input(["안녕"], m)], {"model_name": "gpt"}, "Unknown model 'gpt'"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_each_bad_request_is_refused_with_a_sentence_over_grpc_and_http(make_server, case: str) -> None:
    server = await make_server()
    build, options, fragment = BAD[case]
    grpc_client, http_client = clients(server)
    try:
        for client, module in ((grpc_client, grpcclient), (http_client, httpclient)):
            kwargs: dict[str, object] = {}
            if "outputs" in options:
                kwargs["outputs"] = [module.InferRequestedOutput(options["outputs"])]
            with pytest.raises(InferenceServerException) as caught:
                await client.infer(options.get("model_name", MODEL), build(module), **kwargs)
            not_found = case == "unknown model"
            expected_status = (
                ("StatusCode.NOT_FOUND" if not_found else "StatusCode.INVALID_ARGUMENT")
                if module is grpcclient
                else ("404" if not_found else "400")
            )
            assert caught.value.status() == expected_status, caught.value
            assert fragment in caught.value.message(), caught.value
    finally:
        await grpc_client.close()
        await http_client.close()
    code = "NOT_FOUND" if case == "unknown model" else "INVALID_ARGUMENT"
    assert server.metrics.value("gamjeong_requests_total", {"method": "ModelInfer", "code": code}) == 2


async def test_malformed_http_bodies_get_400_with_the_protocol_error_object(make_server) -> None:
    import httpx

    server = await make_server()
    url = f"http://127.0.0.1:{server.http_port}/v2/models/{MODEL}/infer"
    async with httpx.AsyncClient(timeout=30) as web:
        not_json = await web.post(url, content=b"{nope")
        lying = await web.post(url, content=b'{"inputs": []}', headers={"Inference-Header-Content-Length": "999"})
        short = await web.post(
            url,
            content=b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":9}}]}'
            + b"\x05\x00\x00\x00ab",
            headers={"Inference-Header-Content-Length": "95"},
        )
        ok = await web.post(
            url, json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["기뻐요"]}]}
        )
    for response, fragment in ((not_json, "not JSON"), (lying, "Inference-Header-Content-Length"), (short, "binary")):
        assert response.status_code == 400 and fragment in response.json()["error"], response.text
    body = ok.json()
    assert ok.status_code == 200 and body["model_name"] == MODEL
    assert [o["name"] for o in body["outputs"]] == ["probabilities", "label"]
    assert len(body["outputs"][0]["data"]) == NUM_LABELS and body["outputs"][1]["data"][0] in LABEL_NAMES


# --- auth -------------------------------------------------------------------------------------------------------
async def test_the_auth_token_guards_oip_but_not_its_liveness_and_readiness(make_server) -> None:
    server = await make_server(auth_token=TOKEN)
    grpc_client, http_client = clients(server)
    header = {"authorization": f"Bearer {TOKEN}"}
    try:
        for client, module, status in (
            (grpc_client, grpcclient, "StatusCode.UNAUTHENTICATED"),
            (http_client, httpclient, "401"),
        ):
            assert await client.is_server_live() and await client.is_server_ready()
            with pytest.raises(InferenceServerException) as caught:
                await client.infer(MODEL, [text_input(["안녕"], module)])
            assert caught.value.status() == status and "bearer token" in caught.value.message()
            with pytest.raises(InferenceServerException):
                await client.get_model_metadata(MODEL)
            result = await client.infer(MODEL, [text_input(["안녕"], module)], headers=header)
            assert result.as_numpy("probabilities").shape == (1, NUM_LABELS)
    finally:
        await grpc_client.close()
        await http_client.close()


async def test_the_default_synchronous_clients_work(make_server) -> None:
    """tritonclient.grpc and tritonclient.http (geventhttpclient) as a user runs them, in a thread."""
    import tritonclient.grpc as sync_grpc
    import tritonclient.http as sync_http

    server = await make_server()

    def run() -> list[np.ndarray]:
        answers = []
        for module, url in ((sync_grpc, f"127.0.0.1:{server.port}"), (sync_http, f"127.0.0.1:{server.http_port}")):
            client = module.InferenceServerClient(url)
            try:
                answers.append(client.infer(MODEL, [text_input(TEXTS[:4], module)]).as_numpy("probabilities"))
            finally:
                client.close()
        return answers

    grpc_answer, http_answer = await asyncio.to_thread(run)
    assert grpc_answer.shape == http_answer.shape == (4, NUM_LABELS)
    np.testing.assert_allclose(grpc_answer, http_answer, atol=TOLERANCE)
