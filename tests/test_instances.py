"""Model instances in one process (issue 14, `--instances N`): one batcher feeds N inference sessions, which run
batches at the same time, with the same results as one session."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import KOREAN_SENTENCES, as_vector

from gamjeong.clients import AsyncEmotionClient
from gamjeong.errors import GamjeongError
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

TEXTS = [t for texts in KOREAN_SENTENCES.values() for t in texts]
TOLERANCE = 1e-4  # dynamic int8: a text's probabilities move by ~2e-5 with its batch-mates (tests/test_server.py)


class Instance(Predictor):
    """One model instance: a real session behind a barrier that only opens when `parties` instances are inside a
    model call at the same moment, so a test can see that instances really run side by side."""

    def __init__(self, inner: Predictor, barrier: threading.Barrier | None, calls: list[str], name: str) -> None:
        super().__init__(inner.tokenizer, inner.max_length)
        self.inner, self.backend, self.device = inner, inner.backend, inner.device
        self.barrier, self.calls, self.name = barrier, calls, name

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.barrier is not None:
            self.barrier.wait(timeout=30)  # BrokenBarrierError when the other instance never runs at the same time
        self.calls.append(self.name)
        return self.inner.logits(input_ids, attention_mask)


@pytest.fixture(scope="module")
def sessions(tiny_int8_dir: Path) -> list[Predictor]:
    return [load_predictor(tiny_int8_dir, intra_op_threads=1) for _ in range(2)]


@pytest.fixture
def make_server(start_server) -> Callable[..., object]:
    async def start(predictors: list[Predictor], **overrides: object) -> GamjeongServer:
        queue = list(predictors)
        return await start_server(lambda: queue.pop(0), **overrides)  # one predictor per instance

    return start


async def test_two_instances_run_two_batches_at_the_same_time(make_server, sessions) -> None:
    calls: list[str] = []
    barrier = threading.Barrier(2)
    instances = [Instance(s, barrier, calls, f"instance-{i}") for i, s in enumerate(sessions)]
    server = await make_server(instances, instances=2, max_batch_size=1)
    calls.clear()  # the warm-up (both instances warm up side by side, so it passed the barrier too)
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        first, second = await asyncio.gather(client.classify([TEXTS[0]]), client.classify([TEXTS[1]]))
    # One instance would run these two batches one after the other and the first would never pass the barrier.
    assert sorted(calls) == ["instance-0", "instance-1"]
    assert server.batcher is not None and server.batcher.instances == 2
    assert server.metrics.value("gamjeong_model_instances") == 2
    for text, (result,) in ((TEXTS[0], first), (TEXTS[1], second)):
        np.testing.assert_allclose(as_vector(result.scores), sessions[0].predict_proba([text])[0], atol=TOLERANCE)


async def test_results_with_two_instances_equal_those_of_one(make_server, sessions) -> None:
    calls: list[str] = []
    one = await make_server([Instance(sessions[0], None, calls, "one")])
    two = await make_server([Instance(s, None, calls, f"two-{i}") for i, s in enumerate(sessions)], instances=2)
    results = {}
    for name, server in (("one", one), ("two", two)):
        async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
            replies = await asyncio.gather(*(client.classify([text]) for text in TEXTS))
        results[name] = np.stack([as_vector(r.scores) for (r,) in replies])
    np.testing.assert_allclose(results["two"], results["one"], atol=TOLERANCE)


def test_instances_must_be_at_least_one(tiny_int8_dir: Path) -> None:
    assert load_settings(model=tiny_int8_dir).instances == 1
    with pytest.raises(GamjeongError, match="instances"):
        load_settings(model=tiny_int8_dir, instances=0)


def test_intra_op_spinning_reaches_the_session(tiny_int8_dir: Path) -> None:
    key = "session.intra_op.allow_spinning"
    quiet = load_predictor(tiny_int8_dir, intra_op_threads=2, intra_op_spinning=False)
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    assert quiet.predict_proba(TEXTS[:3]).shape == (3, 7)
    # on: spin while a call runs, stop when it ends (an idle server burns no core)
    options = load_predictor(tiny_int8_dir, intra_op_spinning=True).session.get_session_options()
    assert options.get_session_config_entry(key) == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    settings = load_settings(model=tiny_int8_dir, intra_op_spinning="false")  # as GAMJEONG_INTRA_OP_SPINNING
    assert settings.intra_op_spinning is False and load_settings(model=tiny_int8_dir).intra_op_spinning is True
