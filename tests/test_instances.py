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
from gamjeong.server.batcher import DynamicBatcher, instance_executors
from gamjeong.server.grouping import CallCost
from gamjeong.server.layout import InstanceLayout, plan_layout, runs_onnx_on_cpu
from gamjeong.server.metrics import ServerMetrics
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


def test_the_layout_is_one_single_thread_instance_per_cpu_and_a_solo_session_for_onnx_on_a_cpu(
    tiny_int8_dir: Path,
) -> None:
    def plan(cpus: int, on_cpu: bool = True, **given: object) -> InstanceLayout:
        return plan_layout(load_settings(model=tiny_int8_dir, **given), cpus=cpus, onnx_on_cpu=on_cpu)

    assert load_settings(model=tiny_int8_dir).instances == 0  # auto
    assert plan(2) == InstanceLayout(instances=2, threads=1, solo=True)
    assert plan(8) == InstanceLayout(instances=4, threads=2, solo=True)  # at most 4 instances, the CPUs shared out
    assert plan(1) == InstanceLayout(instances=1, threads=None, solo=False)  # one CPU: nothing to add
    assert plan(16, on_cpu=False) == InstanceLayout(instances=1, threads=None, solo=False)  # a GPU, PyTorch
    assert plan(2, solo=False) == InstanceLayout(instances=2, threads=1, solo=False)
    assert plan(4, instances=1) == InstanceLayout(instances=1, threads=None, solo=False)  # as before the layout
    assert plan(4, instances=2, intra_op_threads=2) == InstanceLayout(instances=2, threads=2, solo=True)
    assert plan(4, instances=1, intra_op_threads=4) == InstanceLayout(instances=1, threads=4, solo=False)
    with pytest.raises(GamjeongError, match="instances"):
        load_settings(model=tiny_int8_dir, instances=-1)


def test_the_layout_applies_to_onnx_on_a_cpu_only(tiny_int8_dir: Path, tmp_path: Path) -> None:
    assert runs_onnx_on_cpu(load_settings(model=tiny_int8_dir, device="cpu"))
    assert not runs_onnx_on_cpu(load_settings(model=tiny_int8_dir, device="cuda"))
    assert not runs_onnx_on_cpu(load_settings(model=tiny_int8_dir, backend="pytorch"))
    assert not runs_onnx_on_cpu(load_settings(model=tmp_path))  # no model.onnx: a trained (PyTorch) directory


async def test_the_default_layout_shares_one_tokenizer_and_answers_like_one_session(
    start_server, tiny_int8_dir: Path
) -> None:
    server = await start_server(instances=2, intra_op_threads=1)
    assert server.layout == InstanceLayout(instances=2, threads=1, solo=True)
    batcher = server.batcher
    assert batcher is not None and batcher.instances == 2 and batcher._solo is not None
    first, second, solo = batcher._predictors[0], batcher._predictors[1], batcher._solo[0]
    assert second.tokenizer is first.tokenizer and solo.tokenizer is first.tokenizer
    assert second.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
    assert solo.session.get_session_options().intra_op_num_threads == 0  # type: ignore[attr-defined] # runtime's
    direct = load_predictor(tiny_int8_dir)
    async with AsyncEmotionClient(f"127.0.0.1:{server.port}", max_attempts=1) as client:
        lone = await client.classify([TEXTS[0]])
        together = await asyncio.gather(*(client.classify([text]) for text in TEXTS))
    np.testing.assert_allclose(as_vector(lone[0].scores), direct.predict_proba([TEXTS[0]])[0], atol=TOLERANCE)
    got = np.stack([as_vector(r.scores) for (r,) in together])
    np.testing.assert_allclose(got, direct.predict_proba(TEXTS), atol=TOLERANCE)


class _Named:
    """A predictor that writes down its name at the start and the end of each call, optionally held at a gate."""

    def __init__(self, inner: Predictor, name: str, log: list[str], gate: threading.Event | None = None) -> None:
        self.inner, self.name, self.log, self.gate = inner, name, log, gate

    def __getattr__(self, attribute: str):
        return getattr(self.inner, attribute)

    def predict_encoded(self, encoded):
        self.log.append(f"{self.name} start {len(encoded)}")
        if self.gate is not None:
            assert self.gate.wait(timeout=30)
        result = self.inner.predict_encoded(encoded)
        self.log.append(f"{self.name} end")
        return result


async def test_a_batch_alone_on_an_idle_server_runs_on_the_solo_session_and_never_beside_the_instances(
    sessions: list[Predictor],
) -> None:
    log: list[str] = []
    gate = threading.Event()
    executors = instance_executors(3)
    short, long = TEXTS[0], " ".join(TEXTS)
    batcher = DynamicBatcher(
        _Named(sessions[0], "instance-0", log),  # type: ignore[arg-type]
        max_batch_size=8,
        max_batch_tokens=4096,
        max_wait_ms=0,
        max_queue_size=64,
        executor=executors[0],
        metrics=ServerMetrics(),
        more_instances=[(_Named(sessions[1], "instance-1", log), executors[1])],  # type: ignore[list-item]
        grouping="cost",
        # calls are nearly free and tokens dear: a short and a long text are cut into two calls
        call_cost=CallCost(per_call_s=1e-6, per_token_s=1e-3),
        solo=(_Named(sessions[0], "solo", log, gate), executors[2]),  # type: ignore[arg-type]
    )
    batcher.start()
    encode = sessions[0].encode
    try:
        # A lone text on an idle server: the solo session. While it runs, another text waits for it, not for an
        # instance (the two would share the cores); then it is alone too, and runs there as well.
        first = batcher.submit(encode([short]))
        await asyncio.sleep(0.1)
        second = batcher.submit(encode([TEXTS[1]]))
        await asyncio.sleep(0.2)
        assert log == ["solo start 1"]
        gate.set()
        outcomes = await asyncio.gather(*first, *second)
        assert log == ["solo start 1", "solo end", "solo start 1", "solo end"]
        # Two groups at once (a short and a long text): the instances, side by side.
        log.clear()
        outcomes += await asyncio.gather(*batcher.submit(encode([short, long])))
        starts = sorted(entry for entry in log if "start" in entry)
        assert starts == ["instance-0 start 1", "instance-1 start 1"]
    finally:
        await batcher.stop()
        for executor in executors:
            executor.shutdown()
    expected = sessions[0].predict_proba([short, TEXTS[1], short, long])
    np.testing.assert_allclose(np.stack([o.probabilities for o in outcomes]), expected, atol=TOLERANCE)


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
