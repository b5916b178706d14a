"""`gamjeong bench server --modes http`: POST /v1/classify against the same started server as gRPC unary, and the
HTTP-over-gRPC overhead per concurrency. Timing-free: only that the numbers exist and no call failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gamjeong.benchmarks.server_bench import ServerBenchConfig, run_server_benchmark
from gamjeong.errors import GamjeongError


def test_http_mode_runs_beside_unary_and_reports_the_overhead(tiny_int8_dir: Path, tmp_path: Path) -> None:
    config = ServerBenchConfig(
        model=[tiny_int8_dir],
        modes=["unary", "http"],
        concurrencies=[1, 3],
        duration_s=0.5,
        warmup_s=0.1,
        threads=1,
        output=tmp_path,
    )
    results = run_server_benchmark(config)
    rows = {(r["mode"], r["concurrency"]): r for r in results["rows"]}
    assert set(rows) == {(m, c) for m in ("unary", "http") for c in (1, 3)}
    for row in rows.values():
        assert row["errors"] == 0 and row["requests"] > 0 and row["texts"] == row["requests"], row
        assert row["batches"]["model_calls"] > 0  # the HTTP calls went through the same batcher
    overhead = results["servers"][0]["http_vs_grpc_unary"]
    assert set(overhead) == {"1", "3"}
    for entry in overhead.values():
        assert entry["http_p50_ms"] > 0 and entry["grpc_p50_ms"] > 0 and entry["throughput_ratio"] > 0
        assert entry["p50_overhead_ms"] == pytest.approx(entry["http_p50_ms"] - entry["grpc_p50_ms"], abs=1e-3)
    assert "http" in results["servers"][0]["ratios"]
    # the paired measurements: raw and server alternating, so drift between them does not decide the ratio
    server = results["servers"][0]
    paired = server["paired_c1"]
    assert paired["calls"] >= 20 and paired["raw_p50_ms"] > 0 and paired["server_p50_ms"] > 0
    assert server["ratios"]["unary"]["p50_overhead_ms_at_c1_paired"] == paired["overhead_p50_ms"]
    throughput = server["paired_throughput"]
    assert throughput["concurrency"] == 3
    assert len(throughput["raw_texts_per_s"]) == len(throughput["server_texts_per_s"]) == 3
    assert min(throughput["raw_texts_per_s"]) > 0 and min(throughput["server_texts_per_s"]) > 0
    expected = sum(throughput["server_texts_per_s"]) / sum(throughput["raw_texts_per_s"])
    assert throughput["ratio"] == pytest.approx(expected, abs=1e-3)
    assert server["ratios"]["unary"]["throughput_ratio_at_highest_paired"] == throughput["ratio"]


def test_http_mode_against_a_target_needs_its_http_address(tmp_path: Path) -> None:
    config = ServerBenchConfig(target="127.0.0.1:1", modes=["http"], output=tmp_path)
    with pytest.raises(GamjeongError, match="--http HOST:PORT"):
        run_server_benchmark(config)


def test_the_default_modes_stay_the_grpc_ones() -> None:
    assert ServerBenchConfig().modes == ["unary", "stream", "chat"]
