"""A new model without downtime (issue 21): the model path is a symlink a deployment points at a new export; an admin
call, SIGHUP or the watcher reloads it while 64 clients keep calling."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from processes import kill_if_running, pump, wait_for

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.artifacts import read_manifest
from gamjeong.predictor import load_predictor

TEXTS = ["오늘 정말 행복해요", "진짜 화가 나서 못 참겠어", "밤길이 너무 무서워요", "헐 이게 진짜야?"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def second_int8_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """Another export of the same tiny architecture, other random weights: another model version."""
    from gamjeong.export.exporter import ExportConfig, export_model
    from gamjeong.modeling import save_random_model

    trained = tmp_path_factory.mktemp("tiny-model-b")
    save_random_model(trained, tiny_tokenizer, real_size=False, seed=1)
    output = tmp_path_factory.mktemp("tiny-int8-b") / "model"
    return export_model(ExportConfig(model=trained, output=output, quantize="int8", parity_threshold=0.0))


@pytest.fixture
def model_link(tmp_path: Path, tiny_int8_dir: Path) -> Path:
    link = tmp_path / "current"
    link.symlink_to(tiny_int8_dir)
    return link


def point(link: Path, target: Path) -> None:
    """Move the symlink atomically, as a deployment does (a new link renamed over the old one)."""
    fresh = link.with_name(link.name + ".new")
    fresh.symlink_to(target)
    os.replace(fresh, link)


def vector(result: pb.EmotionResult) -> np.ndarray:
    out = np.zeros(7, dtype=np.float32)
    for score in result.scores:
        out[score.label_id] = score.score
    return out


async def test_a_reload_under_load_fails_no_call_and_switches_within_a_batch(
    start_server, model_link: Path, tiny_int8_dir: Path, second_int8_dir: Path
) -> None:
    old_version, new_version = read_manifest(tiny_int8_dir).version, read_manifest(second_int8_dir).version
    assert old_version != new_version
    server = await start_server(model=model_link, reload_watch_s=0, http_port=0)
    old_predictor = weakref.ref(server.engine.predictor)
    new_model = load_predictor(second_int8_dir)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub, admin = pb_grpc.EmotionClassifierStub(channel), pb_grpc.ModelAdminStub(channel)
    assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).model_version == old_version

    reloaded_at: list[float] = []
    calls: list[tuple[float, pb.ClassifyResponse]] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            calls.append((started, await stub.Classify(pb.ClassifyRequest(texts=[TEXTS[i % 4]]), timeout=30)))

    clients = [asyncio.ensure_future(client(i)) for i in range(64)]
    await asyncio.sleep(0.5)
    point(model_link, second_int8_dir)
    answer = await admin.ReloadModel(pb.ReloadModelRequest(), timeout=60)
    reloaded_at.append(time.monotonic())
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)  # any failed call raises here
    assert answer.changed and answer.previous_model_version == old_version
    assert answer.model.model_version == new_version and answer.model.exported_at
    versions = {r.model_version for _, response in calls for r in response.results}
    assert versions == {old_version, new_version}
    after = [response for started, response in calls if started > reloaded_at[0]]
    assert after and all(r.model_version == new_version for response in after for r in response.results)
    for response in after[:20]:
        result = response.results[0]
        text = next(t for t in TEXTS if np.allclose(vector(result), new_model.predict_proba([t])[0], atol=TOLERANCE))
        assert text  # the new model's own answer for one of the texts sent
    assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).model_version == new_version
    assert (
        server.metrics.value(
            "gamjeong_model_info", {"model_version": new_version, "exported_at": answer.model.exported_at}
        )
        == 1
    )
    assert "gamjeong_model_info" not in str(
        [
            s
            for m in server.metrics.registry.collect()
            for s in m.samples
            if s.labels.get("model_version") == old_version
        ]
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
        info = (await http.get("/v1/info")).json()
        classified = (await http.post("/v1/classify", json={"texts": TEXTS[:1]})).json()
    assert info["model_version"] == new_version and classified["results"][0]["model_version"] == new_version
    await channel.close()
    gc.collect()
    assert old_predictor() is None, "the old model is still referenced after the swap"


async def test_a_broken_directory_changes_nothing(
    start_server, model_link: Path, tmp_path: Path, tiny_int8_dir: Path, second_int8_dir: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(second_int8_dir, broken)
    with (broken / "model.onnx").open("r+b") as onnx:  # same size, other bytes: the sha256 no longer matches
        onnx.seek(100)
        onnx.write(b"\0" * 16)
    server = await start_server(model=model_link, reload_watch_s=0)
    serving = server.engine
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, admin = pb_grpc.EmotionClassifierStub(channel), pb_grpc.ModelAdminStub(channel)
        point(model_link, broken)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.ReloadModel(pb.ReloadModelRequest(), timeout=60)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sha256" in refused.value.details() and "still serving the old one" in refused.value.details()
        info = await stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.model_version == read_manifest(tiny_int8_dir).version
        assert (await stub.Classify(pb.ClassifyRequest(texts=TEXTS))).results[0].model_version == info.model_version
        assert server.engine is serving
        # The same export again: nothing to do, nothing reloaded.
        point(model_link, tiny_int8_dir)
        same = await admin.ReloadModel(pb.ReloadModelRequest(), timeout=60)
        assert not same.changed and same.model.model_version == info.model_version and server.engine is serving


async def test_the_watcher_reloads_when_the_symlink_moves(start_server, model_link: Path, second_int8_dir) -> None:
    server = await start_server(model=model_link, reload_watch_s=0.1)
    point(model_link, second_int8_dir)
    new_version = read_manifest(second_int8_dir).version
    for _ in range(600):
        if server.servicer.model_info.model_version == new_version:
            break
        await asyncio.sleep(0.05)
    assert server.servicer.model_info.model_version == new_version


async def test_the_admin_call_needs_the_token(start_server, model_link: Path) -> None:
    server = await start_server(model=model_link, reload_watch_s=0, auth_token="s3cret")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        admin = pb_grpc.ModelAdminStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.ReloadModel(pb.ReloadModelRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await admin.ReloadModel(
            pb.ReloadModelRequest(), timeout=30, metadata=(("authorization", "Bearer s3cret"),)
        )
        assert not answer.changed


def test_sighup_reloads_the_engine_process_and_every_front_end_follows(
    tmp_path: Path, tiny_int8_dir: Path, second_int8_dir: Path
) -> None:
    link = tmp_path / "current"
    link.symlink_to(tiny_int8_dir)
    command = [sys.executable, "-m", "gamjeong.cli", "serve", "--model", str(link), "--host", "127.0.0.1"]
    command += [
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--workers",
        "2",
        "--log-format",
        "json",
        "--reload-watch-s",
        "0",
    ]
    command += ["--instances", "1", "--no-solo", "--grace-s", "2", "--drain-s", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    pump(process.stderr, lines)
    new_version = read_manifest(second_int8_dir).version
    try:
        port = wait_for(lines, "listening")["port"]
        wait_for(lines, "model ready")
        point(link, second_int8_dir)
        process.send_signal(signal.SIGHUP)
        wait_for(lines, "model reloaded")
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # new connections reach either front end
                stub = pb_grpc.EmotionClassifierStub(channel)
                seen = {
                    stub.Classify(pb.ClassifyRequest(texts=TEXTS), timeout=10).results[0].model_version
                    for _ in range(3)
                }
            if seen == {new_version} and len([ln for ln in lines if "front end follows" in ln]) == 2:
                break
            time.sleep(0.1)
        assert seen == {new_version}
        assert len([ln for ln in lines if "front end follows the reloaded model" in ln]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        kill_if_running(process)
