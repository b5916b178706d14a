"""How the batcher splits the texts it took into model calls: pure functions, testable without a server.

Real short texts are heavy-tailed (GoEmotions-Korean: mean 17 tokens, p95 33, max 64), and a batch pads every text to
its longest one. Sorting by length and cutting at a fixed batch size still pads a 10-token text to 60 when the cut
falls badly; one call per text pays the model's fixed per-call cost every time. `plan_groups` chooses the cuts by a
cost model instead: a call of `count` texts padded to `width` tokens costs `per_call_s + per_token_s * count * width`
(measured on this model, on this machine, at start-up: `measure_call_cost`), and the split of the sorted texts that
minimises the summed cost is found exactly by dynamic programming (with sorted lengths the best groups are contiguous
runs, so the search is over cut points: O(texts x max_batch_size)).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallCost:
    """Seconds of one model call: a fixed part, plus a part per padded token (count x width)."""

    per_call_s: float
    per_token_s: float

    def of(self, count: int, width: int) -> float:
        return self.per_call_s + self.per_token_s * count * width


def group_by_length(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that each group has <= max_batch_size texts and <= max_batch_tokens padded tokens.

    The fixed-size split (`--grouping fill`): texts are sorted by length first, so each group pads to a width close
    to its own texts, and a group is cut only when it is full. A text longer than the token budget runs alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # sorted ascending: the newcomer is the widest
        if current and (len(current) >= max_batch_size or (len(current) + 1) * width > max_batch_tokens):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def plan_groups(lengths: Sequence[int], cost: CallCost, max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices split into the groups of least total modelled cost, each within max_batch_size and max_batch_tokens.

    Groups come out in ascending length order, each a contiguous run of the sorted texts. A cut is made exactly where
    the padding it saves is worth more than the extra call's fixed cost. A text over the token budget runs alone.
    On equal cost the plan with fewer, larger calls wins (fewer calls also means less scheduling on the event loop).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    if n == 0:
        return []
    widths = [lengths[i] for i in order]
    # best[j]: least cost of the first j sorted texts; cut[j]: where the last group of that plan starts.
    best = [0.0] + [math.inf] * n
    calls = [0] + [0] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = widths[j - 1]  # the widest of any group ending at j
        for i in range(j - 1, max(j - max_batch_size, 0) - 1, -1):
            count = j - i
            if count > 1 and count * width > max_batch_tokens:
                break  # a larger group only gets more tokens
            total = best[i] + cost.of(count, width)
            # A relative tolerance: float sums of the same costs in another order must count as equal.
            tolerance = 1e-9 * total
            if total < best[j] - tolerance or (total <= best[j] + tolerance and calls[i] + 1 < calls[j]):
                best[j], calls[j], cut[j] = total, calls[i] + 1, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    groups.reverse()
    return groups


def padding(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(padded tokens, real tokens) of running `groups` of texts of `lengths`: what the metrics report per call."""
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups if g)
    real = sum(lengths[i] for g in groups for i in g)
    return padded, real


def fit_call_cost(samples: Sequence[tuple[int, float]]) -> CallCost:
    """Least-squares line through (padded tokens, seconds) samples; both parts kept non-negative.

    A noisy machine can tilt the line below zero at one end; a negative per-call cost would make the planner cut every
    text into its own call, so it is clamped (the per-token part is then the mean seconds per token).
    """
    xs = [float(t) for t, _ in samples]
    ys = [s for _, s in samples]
    if len(set(xs)) < 2:
        return CallCost(per_call_s=max(statistics.fmean(ys), 0.0), per_token_s=0.0)
    slope, intercept = statistics.linear_regression(xs, ys)
    if slope <= 0:
        return CallCost(per_call_s=max(statistics.fmean(ys), 0.0), per_token_s=0.0)
    if intercept < 0:
        return CallCost(per_call_s=0.0, per_token_s=sum(ys) / sum(xs))
    return CallCost(per_call_s=intercept, per_token_s=slope)


# (texts, width) of the start-up measurement: short and longer calls, one text and many, as real traffic has.
CALIBRATION_SHAPES: tuple[tuple[int, int], ...] = ((1, 16), (1, 48), (8, 16), (8, 48), (16, 32))


def measure_predictor_cost(predictor: Any) -> CallCost:
    """`measure_call_cost` on a gamjeong Predictor: real token ids (a Korean sentence, repeated) cut to each width,
    the final [SEP] kept, so the model runs what it runs in service."""
    from gamjeong.tokenization import EncodedText

    ids = predictor.encode(["오늘 정말 행복해요" * 40])[0].input_ids

    def run(count: int, width: int) -> None:
        width = max(2, min(width, len(ids)))
        row = EncodedText([*ids[: width - 1], ids[-1]], truncated=False)
        predictor.predict_encoded([row] * count)

    return measure_call_cost(run)


def measure_call_cost(
    run: Callable[[int, int], object],
    shapes: Sequence[tuple[int, int]] = CALIBRATION_SHAPES,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> CallCost:
    """Time `run(count, width)` (one model call of that shape) and fit the cost line.

    The fastest of `repeats` runs per shape is kept: other work on shared cores only ever adds time, so the minimum is
    the closest to what the model itself costs.
    """
    samples: list[tuple[int, float]] = []
    for count, width in shapes:
        times = []
        for _ in range(repeats):
            started = clock()
            run(count, width)
            times.append(clock() - started)
        samples.append((count * width, min(times)))
    return fit_call_cost(samples)
