"""The blocking client, its retry policy and deadlines, and the `gamjeong chat` command, against a server running on
its own event loop in a background thread (the blocking client must not block the server's loop)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import KOREAN_SENTENCES
from typer.testing import CliRunner

from gamjeong.clients import ChatMessage, EmotionClient
from gamjeong.labels import LABEL_NAMES
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.background import BackgroundServer
from gamjeong.server.service import RequestError
from gamjeong.server.settings import load_settings

TEXTS = [t for texts in KOREAN_SENTENCES.values() for t in texts]
TOLERANCE = 1e-4  # dynamic int8: see tests/test_server.py


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture(scope="module")
def served(tiny_int8_dir: Path, predictor: Predictor) -> Iterator[BackgroundServer]:
    settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1)
    server = BackgroundServer(settings, predictor_factory=lambda: predictor)
    server.start()
    yield server
    server.stop(0)


def vector(scores: dict[str, float]) -> np.ndarray:
    return np.array([scores[name] for name in LABEL_NAMES])


def test_blocking_client_classify_stream_chat_and_model_info(served: BackgroundServer, predictor: Predictor) -> None:
    with EmotionClient(served.target) as client:
        results = client.classify(TEXTS[:4])
        streamed = list(client.classify_stream(TEXTS))
        replies = list(client.chat([ChatMessage("a", TEXTS[0], "room-1"), ChatMessage("b", ""), "세 번째 메시지"]))
        info = client.model_info()
    assert len(results) == 4 and len(streamed) == len(TEXTS)
    for text, result in zip(TEXTS, streamed, strict=True):
        np.testing.assert_allclose(vector(result.scores), predictor.predict_proba([text])[0], atol=TOLERANCE)
        assert set(result.scores) == set(LABEL_NAMES) and result.label in LABEL_NAMES
    assert [r.id for r in replies] == ["a", "b", "2"]  # plain strings are numbered by position
    assert replies[0].ok and replies[0].conversation_id == "room-1"
    assert not replies[1].ok and replies[1].error_code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.quantization == "int8" and info.max_input_length == predictor.max_length


def test_unavailable_is_retried_by_the_channel_retry_policy(served: BackgroundServer) -> None:
    servicer = served.server.servicer
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        if refusals_left:
            refusals_left.pop()
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "warming up")

    servicer.check_ready = flaky  # type: ignore[method-assign]
    try:
        refusals_left = [1, 1]
        with EmotionClient(served.target) as client:
            assert len(client.classify(["재시도해 주세요"])) == 1
        assert len(attempts) == 3  # two UNAVAILABLE, retried by the channel, then the answer

        attempts.clear()
        refusals_left = [1]
        with EmotionClient(served.target, max_attempts=1) as client, pytest.raises(grpc.RpcError) as caught:
            client.classify(["재시도 없이"])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and len(attempts) == 1

        attempts.clear()
        with EmotionClient(served.target) as client, pytest.raises(grpc.RpcError) as caught:
            client.classify([""])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(attempts) == 1  # never retried
    finally:
        del servicer.check_ready  # back to the class's method


def test_client_deadline(served: BackgroundServer) -> None:
    gate = threading.Event()
    batcher = served.server.batcher
    assert batcher is not None
    real = batcher.predictor

    class Held:  # delegates to the real predictor once the gate opens
        def __getattr__(self, name: str):
            return getattr(real, name)

        def predict_encoded(self, encoded):
            gate.wait(30)
            return real.predict_encoded(encoded)

    batcher.predictor = Held()  # type: ignore[assignment]
    try:
        with EmotionClient(served.target, timeout=0.3) as client, pytest.raises(grpc.RpcError) as caught:
            client.classify(["느린 서버"])
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The client's default deadline is for unary calls; a stream runs as long as it takes.
        threading.Timer(1.0, gate.set).start()
        with EmotionClient(served.target, timeout=0.3) as client:
            assert len(list(client.classify_stream(["느린", "스트림"]))) == 2
            assert [r.ok for r in client.chat(["느린 채팅"])] == [True]
    finally:
        gate.set()
        batcher.predictor = real


def test_chat_command_prints_each_emotion_in_order(served: BackgroundServer) -> None:
    from gamjeong.cli import app

    result = CliRunner().invoke(app, ["chat", "--server", served.target], input="오늘 정말 행복해요\n\n너무 무서워요\n")
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [fields[0] for fields in lines] == ["1", "3"]  # line numbers; the blank line is no message
    assert all(fields[1] in LABEL_NAMES and 0 <= float(fields[3]) <= 1 for fields in lines)


def test_chat_command_without_a_server_is_one_sentence() -> None:
    from gamjeong.cli import app

    with socket_bound_then_closed() as port:
        result = CliRunner().invoke(app, ["chat", "--server", f"127.0.0.1:{port}"], input="안녕\n")
    assert result.exit_code == 2
    assert "error: Cannot reach a gamjeong server" in result.output and "Traceback" not in result.output


class socket_bound_then_closed:
    """A local port nobody listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc_info: object) -> None:
        return None


def test_classify_command_with_server_matches_the_server(served: BackgroundServer) -> None:
    import json

    from gamjeong.cli import app

    texts = TEXTS[:2]
    result = CliRunner().invoke(app, ["classify", "--server", served.target, "--json", *texts])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    with EmotionClient(served.target) as client:
        expected = client.classify(texts)
    assert [p["text"] for p in printed] == texts
    for shown, direct in zip(printed, expected, strict=True):
        assert shown["label"] == direct.label and shown["label_ko"] == direct.label_ko
        assert list(shown["probabilities"]) == list(LABEL_NAMES)  # id order, like the local command
        np.testing.assert_allclose(vector(shown["probabilities"]), vector(direct.scores), atol=TOLERANCE)
    refused = CliRunner().invoke(app, ["classify", "--server", served.target, "좋아", "  "])
    assert refused.exit_code == 2 and "INVALID_ARGUMENT" in refused.output and "texts[1] is empty" in refused.output
