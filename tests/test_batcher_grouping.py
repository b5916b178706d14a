"""The batcher's cost-model grouping (server/grouping.py) and the batcher running it: plans, cost fitting, results
equal to one-by-one calls, and the padding metrics."""

from __future__ import annotations

import asyncio
import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.batcher import DynamicBatcher
from gamjeong.server.grouping import CallCost, fit_call_cost, measure_call_cost, padding, plan_groups
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.settings import load_settings


def plan_cost(lengths: list[int], groups: list[list[int]], cost: CallCost) -> float:
    return sum(cost.of(len(g), max(lengths[i] for i in g)) for g in groups)


def all_partitions_cost(widths: list[int], cost: CallCost, max_size: int, max_tokens: int) -> float:
    """Brute force: the least cost over every way of cutting the sorted widths into contiguous allowed groups."""
    widths = sorted(widths)
    n = len(widths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        total = 0.0
        for a, b in itertools.pairwise(bounds):
            count, width = b - a, widths[b - 1]
            if count > max_size or (count > 1 and count * width > max_tokens):
                break
            total += cost.of(count, width)
        else:
            best = min(best, total)
    return best


def test_a_cut_is_made_exactly_where_the_padding_saved_beats_the_call_cost() -> None:
    lengths = [10, 60, 10, 10, 60, 10]
    # Together: 6 x 60 = 360 tokens. Cut: 4 x 10 + 2 x 60 = 160 tokens, 200 tokens saved for one more call.
    cheap_calls = CallCost(per_call_s=1.0, per_token_s=0.01)  # 200 tokens = 2.0 s > 1.0 s per call: cut
    dear_calls = CallCost(per_call_s=3.0, per_token_s=0.01)  # 2.0 s < 3.0 s: keep one call
    assert plan_groups(lengths, cheap_calls, 32, 10_000) == [[0, 2, 3, 5], [1, 4]]
    assert plan_groups(lengths, dear_calls, 32, 10_000) == [[0, 2, 3, 5, 1, 4]]


def test_plans_are_sorted_bounded_complete_and_optimal() -> None:
    rng = random.Random(7)
    for trial in range(200):
        n = rng.randint(1, 9)
        lengths = [rng.choice([rng.randint(3, 20), rng.randint(20, 64)]) for _ in range(n)]
        cost = CallCost(per_call_s=rng.uniform(0, 0.01), per_token_s=rng.uniform(1e-6, 2e-4))
        max_size, max_tokens = rng.randint(1, 6), rng.choice([64, 128, 10_000])
        groups = plan_groups(lengths, cost, max_size, max_tokens)
        assert sorted(i for g in groups for i in g) == list(range(n)), trial
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(flat), trial  # groups are contiguous runs of the sorted texts
        for g in groups:
            assert len(g) <= max_size
            assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= max_tokens
        assert plan_cost(lengths, groups, cost) == pytest.approx(
            all_partitions_cost(lengths, cost, max_size, max_tokens), rel=1e-9
        ), trial


def test_free_calls_split_every_width_and_free_tokens_make_full_batches() -> None:
    lengths = [5, 9, 5, 9, 30]
    assert plan_groups(lengths, CallCost(0.0, 1e-4), 32, 10_000) == [[0, 2], [1, 3], [4]]  # ties: fewer calls
    assert plan_groups(lengths * 2, CallCost(1e-3, 0.0), 4, 10_000) == [[0, 2, 5, 7], [1, 3, 6, 8], [4, 9]]
    assert plan_groups([], CallCost(1e-3, 1e-5), 4, 100) == []
    # Over the token budget on its own: still runs, alone.
    assert plan_groups([500, 3, 4], CallCost(1e-3, 1e-5), 8, 100) == [[1, 2], [0]]


def test_padding_counts_padded_and_real_tokens() -> None:
    assert padding([10, 60, 10], [[0, 2], [1]]) == (2 * 10 + 60, 80)
    assert padding([10, 60, 10], [[0, 1, 2]]) == (3 * 60, 80)


def test_the_cost_line_is_fitted_and_never_negative() -> None:
    line = CallCost(per_call_s=0.002, per_token_s=5e-5)
    fitted = fit_call_cost([(t, line.of(1, t)) for t in (16, 48, 128, 512)])
    assert fitted.per_call_s == pytest.approx(0.002) and fitted.per_token_s == pytest.approx(5e-5)
    below_zero = fit_call_cost([(16, 0.0001), (512, 0.05)])  # the line crosses zero: no negative call cost
    assert below_zero.per_call_s == 0.0 and below_zero.per_token_s == pytest.approx(0.0501 / 528)
    flat = fit_call_cost([(16, 0.004), (512, 0.003)])
    assert flat.per_token_s == 0.0 and flat.per_call_s == pytest.approx(0.0035)


def test_measure_call_cost_keeps_the_fastest_run_of_each_shape() -> None:
    now = [0.0]
    noise = itertools.cycle([0.5, 0.0, 0.2])  # other work on the machine only ever adds time

    def run(count: int, width: int) -> None:
        now[0] += 0.001 + 1e-5 * count * width + next(noise)

    cost = measure_call_cost(run, clock=lambda: now[0])
    assert cost.per_call_s == pytest.approx(0.001) and cost.per_token_s == pytest.approx(1e-5)


def test_settings_take_both_costs_or_neither(tmp_path: Path) -> None:
    assert load_settings(model=tmp_path).grouping == "cost"
    given = load_settings(model=tmp_path, call_cost_ms=1.5, token_cost_us=40.0)
    assert (given.call_cost_ms, given.token_cost_us) == (1.5, 40.0)
    with pytest.raises(Exception, match="both"):
        load_settings(model=tmp_path, call_cost_ms=1.5)


# --- the batcher with the cost model, on a real fp32 model --------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_predictor(tiny_model_dir: Path) -> Predictor:
    """PyTorch fp32: batch-invariant, so grouped results must equal one-by-one results to 1e-5."""
    return load_predictor(tiny_model_dir, backend="pytorch")


TEXTS = [
    "좋아",
    "오늘 정말 행복해요",
    "너무 화가 나서 아무 말도 하고 싶지 않아. 왜 항상 나만 이런 일을 겪어야 하는지 모르겠어.",
    "무서워",
    "와 진짜 깜짝 놀랐잖아",
    "그 소식을 듣고 하루 종일 눈물이 났어요. 아직도 믿기지가 않아요. 너무 슬퍼요.",
    "역겨워",
    "그냥 그래",
    "친구가 생일 선물을 보내줘서 기분이 최고야!",
    "어제 본 영화는 생각보다 지루했고 끝까지 보기가 힘들었어. 돈이 아깝다는 생각이 들었어.",
]


async def test_grouped_results_equal_one_by_one_results_and_padding_is_counted(fp32_predictor: Predictor) -> None:
    metrics = ServerMetrics()
    # Calls dear enough to share, tokens dear enough that the long texts get their own call.
    cost = CallCost(per_call_s=0.001, per_token_s=0.0001)
    executor = ThreadPoolExecutor(max_workers=1)
    batcher = DynamicBatcher(
        fp32_predictor,
        max_batch_size=8,
        max_batch_tokens=4096,
        max_wait_ms=0,
        max_queue_size=64,
        executor=executor,
        metrics=metrics,
        grouping="cost",
        call_cost=cost,
        sort_window=64,
    )
    batcher.start()
    try:
        encoded = fp32_predictor.encode(TEXTS)
        outcomes = await asyncio.gather(*batcher.submit(encoded))  # all queued before the collector runs
    finally:
        await batcher.stop()
        executor.shutdown()
    lengths = [len(e.input_ids) for e in encoded]
    expected = plan_groups(lengths, cost, 8, 4096)
    assert len(expected) > 1 and max(len(g) for g in expected) > 1  # the test covers a real split and a real batch
    for text, outcome in zip(TEXTS, outcomes, strict=True):
        np.testing.assert_allclose(outcome.probabilities, fp32_predictor.predict_proba([text])[0], atol=1e-5)
    assert sorted(o.batch_size for o in outcomes) == sorted(len(g) for g in expected for _ in g)
    padded, real = padding(lengths, expected)
    assert metrics.value("gamjeong_batch_size_count") == len(expected)
    assert metrics.value("gamjeong_batch_real_tokens_sum") == real == sum(lengths)
    assert metrics.value("gamjeong_batch_padded_tokens_sum") == padded
    assert padded < len(TEXTS) * max(lengths)  # less padding than one call of everything


def test_without_a_cost_line_the_batcher_fills_batches(fp32_predictor: Predictor) -> None:
    batcher = DynamicBatcher(
        fp32_predictor,
        max_batch_size=8,
        max_batch_tokens=4096,
        max_wait_ms=0,
        max_queue_size=64,
        executor=ThreadPoolExecutor(max_workers=1),
        metrics=ServerMetrics(),
        grouping="cost",
        call_cost=None,
        sort_window=64,
    )
    assert batcher.grouping == "fill" and batcher.sort_window == 8


async def test_the_server_times_its_cost_line_or_takes_the_given_one(tiny_int8_dir: Path) -> None:
    from gamjeong.server.app import GamjeongServer

    predictor = load_predictor(tiny_int8_dir)
    lines = {}
    for name, overrides in (
        ("measured", {}),
        ("given", {"call_cost_ms": 2.5, "token_cost_us": 40.0}),
        ("fill", {"grouping": "fill"}),
    ):
        settings = load_settings(model=tiny_int8_dir, host="127.0.0.1", port=0, metrics_port=-1, **overrides)
        server = GamjeongServer(settings, predictor_factory=lambda: predictor)
        await server.start()
        try:
            assert server.batcher is not None
            gauge = (
                server.metrics.value("gamjeong_batch_call_cost_seconds", {"part": "call"}),
                server.metrics.value("gamjeong_batch_call_cost_seconds", {"part": "token"}),
            )
            lines[name] = (server.batcher.grouping, server.batcher.call_cost, gauge, server.batcher.sort_window)
        finally:
            await server.stop(0)
    grouping, cost, gauge, window = lines["measured"]
    assert grouping == "cost" and cost is not None and cost.per_call_s + cost.per_token_s > 0 and window == 128
    assert gauge == (cost.per_call_s, cost.per_token_s)
    assert lines["given"][1] == CallCost(0.0025, 0.00004) and lines["given"][2] == (0.0025, 0.00004)
    assert lines["fill"][0] == "fill" and lines["fill"][1] is None and lines["fill"][3] == 32
