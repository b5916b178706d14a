"""Timing a predictor on real texts grouped as a batcher would group them: shared by `bench model` and `bench server`.

Real short texts are heavy-tailed, so how they are grouped into calls decides the throughput: one text per call pays
the model's fixed per-call cost every time, arrival-order batches pad every text to the longest of its batch, and
sorted windows split by the cost model (server/grouping.py) pay for neither more than they must.
"""

from __future__ import annotations

import random
import time
from typing import Any


def best_grouping(lengths: list[int], window: int, cost: Any, max_batch_size: int, max_tokens: int) -> list[list[int]]:
    """Consecutive windows of `window` texts, each sorted by length and split where the padding saved pays for another
    call: the cost-model split the server's batcher makes on a queue that deep."""
    from gamjeong.server.grouping import plan_groups

    groups: list[list[int]] = []
    for start in range(0, len(lengths), window):
        stop = min(start + window, len(lengths))
        for group in plan_groups(lengths[start:stop], cost, max_batch_size, max_tokens):
            groups.append([start + i for i in group])
    return groups


def timed_groups(predictor: Any, texts: list[str], groups: list[list[int]], lengths: list[int], seconds: float):
    """Run the groups (tokenising each, as the server does) round and round for `seconds`; texts/s and tokens/s
    (real tokens: the texts' own lengths, padding not counted)."""
    # A seeded shuffle of the calls: a run that ends part-way through (the usual case) then covers a fair mix of
    # lengths, not only the short end of a sorted plan.
    order = list(range(len(groups)))
    random.Random(0).shuffle(order)
    done_texts = done_tokens = calls = 0
    started = time.perf_counter()
    while True:
        group = groups[order[calls % len(groups)]]
        predictor.predict_encoded(predictor.encode([texts[i] for i in group]))
        calls += 1
        done_texts += len(group)
        done_tokens += sum(lengths[i] for i in group)
        elapsed = time.perf_counter() - started
        if elapsed > seconds and calls >= 3:
            break
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return {
        "calls": calls,
        "mean_texts_per_call": round(done_texts / calls, 2),
        "texts_per_s": round(done_texts / elapsed, 2),
        "tokens_per_s": round(done_tokens / elapsed, 1),
        "padding_ratio": round(padded / sum(lengths[i] for g in groups for i in g), 3),
    }


def grouping_comparison(
    predictor: Any, texts: list[str], batch_size: int, seconds: float, window: int = 64, max_tokens: int = 8192
) -> dict[str, Any]:
    """One text per call, windows of `window` sorted and cost-split, the whole set sorted in batches of `batch_size`
    (every text known in advance: the most any batcher could get), and arrival-order batches of `batch_size`."""
    from gamjeong.server.grouping import measure_predictor_cost

    lengths = [len(e.input_ids) for e in predictor.encode(texts)]
    cost = measure_predictor_cost(predictor)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    plans = {
        "one_per_call": [[i] for i in range(len(texts))],
        "grouped": best_grouping(lengths, window, cost, batch_size, max_tokens),
        "sorted_all": [order[i : i + batch_size] for i in range(0, len(order), batch_size)],
        "arrival_batches": [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)],
    }
    result: dict[str, Any] = {
        "texts": len(texts),
        "mean_tokens_per_text": round(sum(lengths) / len(lengths), 2),
        "max_tokens_per_text": max(lengths),
        "cost_model": {"call_ms": round(cost.per_call_s * 1e3, 3), "token_us": round(cost.per_token_s * 1e6, 3)},
    }
    for name, groups in plans.items():
        result[name] = (
            {"window": window} if name == "grouped" else {"batch_size": 1 if name == "one_per_call" else batch_size}
        )
        result[name] |= timed_groups(predictor, texts, groups, lengths, seconds)
    return result
