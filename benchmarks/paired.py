"""The server against the raw predictor, paired in time: this machine's speed drifts by tens of percent from one minute
to the next (a shared VM), so a raw figure timed before the server started says little about the server's own cost.
Here the two alternate within seconds, the raw predictor in the benchmark's process and the server in its own; while
one runs, the other is idle.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from .grouped import best_grouping, timed_groups
from .load import run_load


def paired_overhead(predictor: Any, target: str, texts: list[str], seconds: float) -> dict[str, Any]:
    """The server's own cost at one client: each text goes to the raw predictor and then to the server, one right
    after the other; the overhead is the median of the per-text differences."""
    from gamjeong.clients import EmotionClient

    raw_ms: list[float] = []
    server_ms: list[float] = []
    floor_ms: list[float] = []
    with EmotionClient(target) as client:
        for text in texts[:5]:  # warm both up
            predictor.predict_encoded(predictor.encode([text]))
            client.classify([text])
        started = time.perf_counter()
        for i in range(100_000):
            text = texts[i % len(texts)]
            t0 = time.perf_counter()
            predictor.predict_encoded(predictor.encode([text]))
            t1 = time.perf_counter()
            client.classify([text])
            t2 = time.perf_counter()
            predictor.predict_encoded(predictor.encode([text]))  # the same state as before the Classify call
            t3 = time.perf_counter()
            client.model_info()
            t4 = time.perf_counter()
            raw_ms.append((t1 - t0) * 1000)
            server_ms.append((t2 - t1) * 1000)
            floor_ms.append((t4 - t3) * 1000)
            if t4 - started > seconds and i >= 19:
                break
    differences = [s - r for s, r in zip(server_ms, raw_ms, strict=True)]
    return {
        "calls": len(differences),
        "raw_p50_ms": round(statistics.median(raw_ms), 3),
        "server_p50_ms": round(statistics.median(server_ms), 3),
        "overhead_p50_ms": round(statistics.median(differences), 3),
        # What any call costs here before the server does anything: the transport's floor under the overhead.
        "empty_call_p50_ms": round(statistics.median(floor_ms), 3),
        "method": "per text: the raw predictor, then the server (blocking gRPC client), back to back; the median of "
        "the differences. empty_call: GetModelInfo (no work) right after another raw call, the gRPC round trip alone",
    }


def paired_throughput(
    predictor: Any, target: str, texts: list[str], concurrency: int, batch_size: int, seconds: float, rounds: int = 3
) -> dict[str, Any]:
    """The server at `concurrency` clients against the raw predictor's best grouping of the same texts (windows of
    `concurrency` texts, sorted and split by the cost model), alternating `rounds` times, `seconds` each."""
    from gamjeong.server.grouping import measure_predictor_cost

    lengths = [len(e.input_ids) for e in predictor.encode(texts)]
    cost = measure_predictor_cost(predictor)
    groups = best_grouping(lengths, concurrency, cost, batch_size, 8192)
    raw_rates: list[float] = []
    server_rates: list[float] = []
    for _ in range(rounds):
        raw_rates.append(timed_groups(predictor, texts, groups, lengths, seconds)["texts_per_s"])
        tally = asyncio.run(run_load(target, "unary", concurrency, seconds, texts, 0))
        server_rates.append(round(tally.texts / tally.elapsed, 2))  # type: ignore[attr-defined]
    return {
        "concurrency": concurrency,
        "raw_texts_per_s": raw_rates,
        "server_texts_per_s": server_rates,
        "ratio": round(statistics.mean(server_rates) / statistics.mean(raw_rates), 3),
        "method": f"{rounds} rounds of {seconds:g} s: the raw predictor on windows of {concurrency} texts sorted and "
        f"cost-split, then the server at {concurrency} clients (one text per call); mean over mean",
    }
