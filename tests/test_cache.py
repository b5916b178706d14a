"""The result cache (issue 14, `--cache-size`): repeated texts are answered without queueing, from the loaded model's
own earlier answer, keyed by the tokenizer-normalised text, the truncation mode and the max length."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import as_vector

from gamjeong.clients import AsyncEmotionClient
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.cache import MAX_CACHED_CHARS, ResultCache
from gamjeong.server.metrics import ServerMetrics
from gamjeong.tokenization import load_serving_tokenizer


class Gated(Predictor):
    """A real predictor whose model calls wait for `gate` and are counted."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner.tokenizer, inner.max_length)
        self.inner, self.backend, self.device = inner, inner.backend, inner.device
        self.gate = threading.Event()
        self.gate.set()
        self.texts_run = 0

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        assert self.gate.wait(30), "test left the gate closed"
        self.texts_run += len(input_ids)
        return self.inner.logits(input_ids, attention_mask)


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture
def make_server(start_server) -> Callable[..., object]:
    async def start(predictor: Predictor, **overrides: object) -> GamjeongServer:
        return await start_server(lambda: predictor, **overrides)

    return start


# --- the cache itself -------------------------------------------------------------------------------------------
def test_least_recently_used_entries_go_first_and_are_counted(tiny_int8_dir: Path) -> None:
    metrics = ServerMetrics()
    cache = ResultCache(2, load_serving_tokenizer(tiny_int8_dir), 32, metrics)
    keys = [cache.key(text, False) for text in ("ㅋㅋㅋ", "헐", "안녕하세요")]
    row = np.full(7, 1 / 7, dtype=np.float32)
    cache.put(keys[0], row, 3, False)
    cache.put(keys[1], row, 3, False)
    assert cache.get(keys[0]) is not None  # "ㅋㅋㅋ" is now the most recently used
    cache.put(keys[2], row, 3, False)  # evicts "헐"
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert len(cache) == 2 and metrics.value("gamjeong_cache_evictions_total") == 1
    assert metrics.value("gamjeong_cache_lookups_total", {"result": "hit"}) == 3
    assert metrics.value("gamjeong_cache_lookups_total", {"result": "miss"}) == 1
    with pytest.raises(ValueError):
        cache.get(keys[0]).probabilities[0] = 1.0  # type: ignore[union-attr]  # shared by every hit: read-only


def test_keys_follow_the_tokenizer_normaliser_truncation_mode_and_length(tiny_int8_dir: Path) -> None:
    tokenizer = load_serving_tokenizer(tiny_int8_dir)
    cache = ResultCache(8, tokenizer, 32, ServerMetrics())
    # BERT's normaliser drops control characters: the model sees the same text, so one entry serves both.
    assert cache.key("헐\x00", False) == cache.key("헐", False)
    assert cache.key("헐", False) != cache.key("헐", True)  # truncate vs refuse
    assert cache.key("헐", False) != ResultCache(8, tokenizer, 16, ServerMetrics()).key("헐", False)
    assert cache.key("ㅋ" * (MAX_CACHED_CHARS + 1), False) is None
    # A special token's spelling is matched before normalisation: such texts keep their raw form.
    assert cache.key("[SEP]\x00", False) != cache.key("[SEP]", False)


# --- in the server ----------------------------------------------------------------------------------------------
async def test_a_repeated_text_is_answered_from_the_cache_without_the_model(make_server, predictor) -> None:
    gated = Gated(predictor)
    server = await make_server(gated, cache_size=64)
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        (first,) = await client.classify(["ㅋㅋㅋ"])
        ran = gated.texts_run
        gated.gate.clear()  # the model is now blocked: only the cache can answer
        try:
            second, third = await client.classify(["ㅋㅋㅋ", "ㅋㅋㅋ"], timeout=10)
            top2 = (await client.classify("ㅋㅋㅋ", top_k=2, timeout=10))[0]
        finally:
            gated.gate.set()
        after_hits = gated.texts_run
        fresh = (await client.classify(["새로운 문장"]))[0]
    assert after_hits == ran  # nothing more ran through the model
    assert not first.timing.cache_hit and second.timing.cache_hit and third.timing.cache_hit
    np.testing.assert_array_equal(as_vector(second.scores), as_vector(first.scores))
    assert second.label == first.label and second.timing.num_tokens == first.timing.num_tokens
    assert second.timing.queue_ns == 0 and second.timing.inference_ns == 0 and second.timing.batch_size == 0
    assert len(top2.scores) == 2 and top2.label == first.label
    assert not fresh.timing.cache_hit
    metrics = server.metrics
    assert metrics.value("gamjeong_cache_lookups_total", {"result": "hit"}) == 3
    assert metrics.value("gamjeong_cache_lookups_total", {"result": "miss"}) == 2
    assert metrics.value("gamjeong_cache_entries") == 2 and metrics.value("gamjeong_cache_capacity") == 64


async def test_a_cached_truncated_text_is_still_refused_when_truncation_is_refused(make_server, predictor) -> None:
    server = await make_server(predictor, cache_size=8)
    long_text = "가나다라마바사 " * 40  # < MAX_CACHED_CHARS characters, > 32 tokens
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        (truncated,) = await client.classify([long_text])
        (again,) = await client.classify([long_text])
        with pytest.raises(grpc.RpcError) as refused:
            await client.classify([long_text], truncation="refuse")
    assert truncated.truncated and again.truncated and again.timing.cache_hit
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_size_zero_turns_the_cache_off(make_server, predictor) -> None:
    gated = Gated(predictor)
    server = await make_server(gated)  # the default
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        first = (await client.classify(["헐"]))[0]
        ran = gated.texts_run
        second = (await client.classify(["헐"]))[0]
    assert server.servicer.cache is None and server.settings.cache_size == 0
    assert gated.texts_run == ran + 1 and not first.timing.cache_hit and not second.timing.cache_hit
    assert server.metrics.value("gamjeong_cache_lookups_total", {"result": "miss"}) == 0
