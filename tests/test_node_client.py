"""The Node.js example client (clients/node) against a real server on a tiny model: the health check and the four RPCs
from another language, through the proto file itself and the bearer token.

Needs node and `npm ci --prefix clients/node` (`make test` runs it when npm exists). Without them the test is skipped,
except where GAMJEONG_REQUIRE_NODE=1 (CI sets it), so CI cannot pass without running it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from gamjeong.labels import LABEL_NAMES
from gamjeong.predictor import load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO_ROOT / "clients" / "node"
TOKEN = "node-token_0123456789"
TEXTS = ["오늘 정말 행복해요", "너무 무서워요 ㅠㅠ"]


def _node_or_skip() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        problem = "the Node client's packages are not installed (npm ci --prefix clients/node)"
    if problem is None:
        return node  # type: ignore[return-value]
    if os.environ.get("GAMJEONG_REQUIRE_NODE") == "1":
        pytest.fail(f"GAMJEONG_REQUIRE_NODE=1 but {problem}")
    pytest.skip(problem)


async def test_the_node_client_makes_every_call(tiny_int8_dir: Path) -> None:
    node = _node_or_skip()
    settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, auth_token=TOKEN)
    predictor = load_predictor(tiny_int8_dir)
    server = GamjeongServer(settings, predictor_factory=lambda: predictor)
    await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            node,
            str(CLIENT_DIR / "client.mjs"),
            f"127.0.0.1:{server.port}",
            "--token",
            TOKEN,
            *TEXTS,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()
        out = json.loads(stdout)
        # Without the token the same client is refused, except its health check.
        refused = await asyncio.create_subprocess_exec(
            node, str(CLIENT_DIR / "client.mjs"), f"127.0.0.1:{server.port}", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={k: v for k, v in os.environ.items() if k != "GAMJEONG_AUTH_TOKEN"},
        )  # fmt: skip
        _, refused_err = await asyncio.wait_for(refused.communicate(), 120)
    finally:
        await server.stop(0)
    assert refused.returncode == 1 and json.loads(refused_err)["error"] == "UNAUTHENTICATED"

    assert out["health"] == {"overall": "SERVING", "gamjeong.v1.EmotionClassifier": "SERVING"}
    info = out["model_info"]
    assert info["backend"] == "onnx-int8" and info["quantization"] == "int8" and info["labels"] == list(LABEL_NAMES)
    expected = [predictor.predict_proba([t])[0] for t in TEXTS]
    labels = [LABEL_NAMES[int(p.argmax())] for p in expected]
    assert [r["label"] for r in out["classify"]] == labels
    assert [r["scores"] for r in out["classify"]] == [3, 3]  # top_k=3
    for result, probabilities in zip(out["classify"], expected, strict=True):
        assert result["score"] == pytest.approx(float(probabilities.max()), abs=1e-4)
    assert out["classify_stream"]["offsets"] == [0]
    assert [r["label"] for r in out["classify_stream"]["results"]] == labels
    chat = out["classify_chat"]
    assert [r["id"] for r in chat] == ["m0", "m1", "blank"]
    assert [r.get("label") for r in chat[:2]] == labels and all(r["conversation_id"] == "node" for r in chat)
    assert chat[2]["error"]["code"] == 3 and "empty" in chat[2]["error"]["message"]  # INVALID_ARGUMENT
    assert out["refused"]["code"] == "INVALID_ARGUMENT" and "at least one text" in out["refused"]["details"]
