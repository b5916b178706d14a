"""One backend of `gamjeong bench model`, measured in this process or in a worker subprocess of its own.

In a subprocess (`python -m gamjeong.benchmarks.backend_worker SPEC RESULT`) load time and peak memory are that
backend's alone; `run_isolated` starts it with the spec that `model_bench` built and reads back its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gamjeong.artifacts import ONNX_MODEL_FILE
from gamjeong.modeling import WEIGHT_FILES

from .environment import peak_rss_mb, rss_mb
from .grouped import grouping_comparison

# Real texts are timed uncut up to this many tokens (GoEmotions-Korean's longest is 64 with the e5 tokenizer).
REAL_TEXT_MAX_TOKENS = 128


def size_on_disk_mb(model_dir: Path, loader: str) -> float:
    if loader == "onnx":
        files = [model_dir / ONNX_MODEL_FILE, *model_dir.glob("*.onnx_data"), *model_dir.glob("*.onnx.data")]
    else:
        files = [model_dir / f for f in WEIGHT_FILES]
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)


def _percentile_row(latencies: list[float], tokenize: list[float], inference: list[float], batch: int) -> dict:
    total = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(total, [50, 95, 99])
    return {
        "iterations": len(latencies),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(total.mean()), 3),
        "texts_per_s": round(batch * len(latencies) / float(np.sum(latencies)), 2),
        "tokenize_p50_ms": round(float(np.percentile(np.asarray(tokenize) * 1000, 50)), 3),
        "inference_p50_ms": round(float(np.percentile(np.asarray(inference) * 1000, 50)), 3),
    }


def measure_backend(spec: dict[str, Any], *, isolated: bool) -> dict[str, Any]:
    """Load one backend, time every cell, and predict the agreement texts. `spec` is JSON-able (see `model_bench._spec`)."""
    from gamjeong.predictor import OnnxPredictor, load_predictor

    threads = spec["threads"]
    # Libraries are imported before the clock starts: load time and memory delta are the model's, not the imports'.
    started = time.perf_counter()
    if spec["loader"] == "pytorch":
        import torch
        from transformers import AutoModelForSequenceClassification  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    import_s = time.perf_counter() - started
    rss_before = rss_mb()
    started = time.perf_counter()
    predictor = load_predictor(
        spec["model_dir"],
        backend=spec["loader"],
        device=spec["device"],
        torch_dtype=spec["torch_dtype"],
        intra_op_threads=threads,
        max_length=max(cell["seq_len"] for cell in spec["cells"]),
    )
    load_s = time.perf_counter() - started
    rss_loaded = rss_mb()
    default_max_length = predictor.max_length
    rows = []
    for cell in spec["cells"]:
        batch, seq_len = cell["batch_size"], cell["seq_len"]
        predictor.max_length = seq_len  # the benchmark's texts are longer: the predictor cuts them at exactly seq_len
        batches = [cell["texts"][i * batch : (i + 1) * batch] for i in range(len(cell["texts"]) // batch)]
        lengths = {len(e.input_ids) for b in batches for e in predictor.encode(b)}
        if lengths != {seq_len}:
            raise RuntimeError(f"inputs for seq_len {seq_len} encode to {sorted(lengths)} tokens")
        for i in range(spec["warmup"]):
            predictor.predict_encoded(predictor.encode(batches[i % len(batches)]))
        latencies: list[float] = []
        tokenize: list[float] = []
        inference: list[float] = []
        cell_started = time.perf_counter()
        for i in range(spec["iterations"]):
            t0 = time.perf_counter()
            encoded = predictor.encode(batches[i % len(batches)])
            t1 = time.perf_counter()
            predictor.predict_encoded(encoded)
            t2 = time.perf_counter()
            tokenize.append(t1 - t0)
            inference.append(t2 - t1)
            latencies.append(t2 - t0)
            if t2 - cell_started > spec["max_cell_seconds"] and i + 1 >= spec["min_iterations"]:
                break
        row = _percentile_row(latencies, tokenize, inference, batch)
        # Every input is exactly seq_len tokens: real tokens per second, no padding in this grid.
        row["tokens_per_s"] = round(row["texts_per_s"] * seq_len, 1)
        rows.append({"backend": predictor.backend, "batch_size": batch, "seq_len": seq_len} | row)
    real_text = None
    if spec.get("real_texts"):
        predictor.max_length = max(default_max_length, REAL_TEXT_MAX_TOKENS)  # real texts as they are, not cut
        real_text = grouping_comparison(predictor, spec["real_texts"], 32, spec["real_text_seconds"])
    predictor.max_length = default_max_length
    probabilities = predictor.predict_proba(spec["agreement_texts"], batch_size=32)
    rss_after = rss_mb()
    if isinstance(predictor, OnnxPredictor):
        configured = predictor.session.get_session_options().intra_op_num_threads
        thread_info = {"onnxruntime_intra_op_threads": configured or "default (one per physical core)"}
    else:
        import torch

        thread_info = {
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
        }
    return {
        "name": predictor.backend,
        "status": "ok",
        "device": predictor.device,
        "load_s": round(load_s, 3),
        "import_s": round(import_s, 3),
        "rss_before_load_mb": round(rss_before, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "rss_delta_mb": round(rss_after - rss_before, 1),
        # the whole process's peak: only this backend's when it ran in its own subprocess
        "peak_rss_mb": round(peak, 1) if isolated and (peak := peak_rss_mb()) is not None else None,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "threads": thread_info,
        "rows": rows,
        "real_text": real_text,
        "probabilities": probabilities.round(6).tolist(),
    }


def run_isolated(spec: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    spec_file, result_file = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_file.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ)
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, "-m", "gamjeong.benchmarks.backend_worker", str(spec_file), str(result_file)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not result_file.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"worker exited with code {proc.returncode}")
    return json.loads(result_file.read_text(encoding="utf-8"))


def _worker_main(spec_file: str, result_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    result = measure_backend(spec, isolated=True)
    Path(result_file).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
