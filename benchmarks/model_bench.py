"""`gamjeong bench model`: PyTorch vs ONNX Runtime latency, throughput, memory and agreement, per backend.

Every backend is measured through the predictor interface the server uses (`gamjeong.predictor.load_predictor`), one
backend at a time, by default each in its own subprocess so that load time and peak memory are that backend's alone.
Per (batch size, sequence length) cell: warm-up batches, then timed batches split into tokenisation (the fast
tokenizer) and inference (padding + model + softmax).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from gamjeong.artifacts import ONNX_MODEL_FILE, is_exported_dir
from gamjeong.errors import GamjeongError
from gamjeong.onnx_runtime import graph_precision  # what the predictor reads too: the graph, not the manifest

from .backend_worker import measure_backend, run_isolated, size_on_disk_mb
from .environment import cpu_bf16_support, environment
from .random_models import (
    RANDOM_MODEL_NAME,
    build_random_model_dir,
    export_for_benchmark,
    export_summary,
    random_real_size_model,
)
from .texts import TextSource, load_texts, texts_of_length

log = logging.getLogger(__name__)

PYTORCH_BACKENDS = ("pytorch-fp32", "pytorch-bf16", "pytorch-fp16")
ONNX_BACKENDS = ("onnx-fp32", "onnx-int8", "onnx-fp16")
KNOWN_BACKENDS = PYTORCH_BACKENDS + ONNX_BACKENDS
REFERENCE_BACKEND = "pytorch-fp32"


def backend_parts(name: str) -> tuple[str, str]:
    """(runtime, precision) of a --backends name such as "onnx-int8" or "pytorch-bf16-cuda" (the suffix only says
    where it ran): the one place these names are taken apart."""
    runtime, precision = name.removesuffix("-cuda").split("-", 1)
    return runtime, precision


RANDOM_WEIGHTS_NOTE = "random weights: timing only"
DISTINCT_BATCHES = 4  # different texts in successive timed batches, so no cache makes a repeat cheaper


class ModelBenchConfig(BaseModel):
    """Settings of one `gamjeong bench model` run."""

    model: Path | None = Field(None, description="Trained model directory (PyTorch backends).")
    onnx: list[Path] = Field(default_factory=list, description="Exported directories (ONNX backends).")
    tokenizer: Path | None = Field(None, description="Tokenizer for the random-weight model.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32])
    seq_lengths: list[int] = Field(default_factory=lambda: [16, 64, 128])
    iterations: int = Field(20, ge=1)
    warmup: int = Field(3, ge=0)
    max_cell_seconds: float = Field(30.0, gt=0, description="Stop a cell's timed loop early after this long.")
    min_iterations: int = Field(5, ge=1)
    backends: list[str] | None = None
    data: Path | None = None
    output: Path = Path("bench-results/model")
    quick: bool = False
    threads: int | None = Field(None, ge=1)
    isolation: Literal["subprocess", "inprocess"] = "subprocess"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    agreement_texts: int = Field(256, ge=1)
    # The data's own texts, unpadded and uncut, grouped as a batcher would group them (benchmarks/grouped.py): what
    # the fixed-length grid cannot show, padding on a real, heavy-tailed mix of lengths. 0: skip.
    real_texts: int = Field(512, ge=0, description="Texts of the data timed as they are (0: skip).")
    real_text_seconds: float = Field(5.0, gt=0, description="Seconds per grouping of the real texts.")
    cache_dir: Path = Field(default_factory=lambda: default_cache_dir())

    @field_validator("batch_sizes", "seq_lengths")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(values))

    @field_validator("backends")
    @classmethod
    def _known(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        for name in values:
            if name.removesuffix("-cuda") not in KNOWN_BACKENDS:
                raise ValueError(f"unknown backend '{name}'; choose from {', '.join(KNOWN_BACKENDS)}")
        return list(dict.fromkeys(values))


def default_cache_dir() -> Path:
    """The random-weight models' folder: `bench` under gamjeong's cache (GAMJEONG_CACHE_DIR when set)."""
    from gamjeong.base_models.registry import cache_root

    return cache_root() / "bench"


def quick_settings(config: ModelBenchConfig, explicit: set[str]) -> ModelBenchConfig:
    """--quick: one batch size, one short length, a few iterations, unless those were given explicitly."""
    if not config.quick:
        return config
    updates: dict[str, Any] = {"agreement_texts": min(config.agreement_texts, 32)}
    if "real_texts" not in explicit:
        updates["real_texts"] = min(config.real_texts, 32)
    if "real_text_seconds" not in explicit:
        updates["real_text_seconds"] = min(config.real_text_seconds, 0.2)
    if "batch_sizes" not in explicit:
        updates["batch_sizes"] = [4]
    if "seq_lengths" not in explicit:
        updates["seq_lengths"] = [16]
    if "iterations" not in explicit:
        updates["iterations"] = 5
    if "warmup" not in explicit:
        updates["warmup"] = 1
    updates["min_iterations"] = min(config.min_iterations, updates.get("iterations", config.iterations))
    return config.model_copy(update=updates)


# --- planning: which backend runs which directory -----------------------------------------------------------------


class BackendPlan(BaseModel):
    name: str
    model_dir: Path | None = None
    loader: Literal["pytorch", "onnx"] = "pytorch"
    torch_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    skip_reason: str | None = None
    error: str | None = None  # the backend could not be prepared (e.g. its export failed)


def _use_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise GamjeongError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu.")
    return available


def plan_backends(
    config: ModelBenchConfig,
    model_dir: Path | None,
    onnx_dirs: list[Path],
    export_onnx: Callable[[str], Path] | None = None,
) -> list[BackendPlan]:
    """The backends to measure (requested or default), each with its directory, or the reason it is skipped."""
    cuda = _use_cuda(config.device)
    suffix = "-cuda" if cuda else ""
    onnx_by_name: dict[str, Path] = {}
    for path in onnx_dirs:
        # onnxruntime here is the CPU build unless onnxruntime-gpu is installed: the predictor names what it ran on.
        name = f"onnx-{graph_precision(path / ONNX_MODEL_FILE)}"
        if name in onnx_by_name:
            raise GamjeongError(f"Two exported directories are both {name}: '{onnx_by_name[name]}' and '{path}'.")
        onnx_by_name[name] = path
    if config.backends is not None:
        requested = [n.removesuffix("-cuda") for n in config.backends]
    else:
        requested = []
        if model_dir is not None:
            requested += ["pytorch-fp32", "pytorch-bf16"] + (["pytorch-fp16"] if cuda else [])
        requested += list(onnx_by_name)
        if model_dir is not None and export_onnx is not None:
            requested += [n for n in ("onnx-fp32", "onnx-int8") if n not in onnx_by_name]
    plans: list[BackendPlan] = []
    for name in requested:
        if name in PYTORCH_BACKENDS:
            dtype = backend_parts(name)[1]
            plan = BackendPlan(name=name + suffix, model_dir=model_dir, loader="pytorch", torch_dtype=dtype)  # type: ignore[arg-type]
            if model_dir is None:
                plan.skip_reason = "no trained model directory (--model) to run PyTorch on"
            elif dtype == "fp16" and not cuda:
                plan.skip_reason = "PyTorch fp16 needs a CUDA GPU; none was available"
            elif dtype == "bf16" and not cuda:
                supported, why = cpu_bf16_support()
                if not supported:
                    plan.skip_reason = why
            plans.append(plan)
            continue
        plan = BackendPlan(name=name, loader="onnx", model_dir=onnx_by_name.get(name))
        if plan.model_dir is None:
            precision = backend_parts(name)[1]
            if precision == "fp16" and not cuda:
                plan.skip_reason = "ONNX fp16 is for CUDA; no GPU was available"
            elif model_dir is not None and export_onnx is not None:
                try:
                    plan.model_dir = export_onnx(precision)
                except GamjeongError as exc:
                    plan.error = f"export to {precision} failed: {exc}"
            else:
                plan.skip_reason = f"no exported {precision} directory given (--onnx DIR)"
        plans.append(plan)
    return plans


# --- measuring one backend (in this process or in a worker subprocess) ---------------------------------------------


def _spec(
    plan: BackendPlan,
    config: ModelBenchConfig,
    cells: list[dict],
    agreement: list[str],
    real_texts: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "model_dir": str(plan.model_dir),
        "loader": plan.loader,
        "torch_dtype": plan.torch_dtype,
        "device": config.device,
        "threads": config.threads,
        "cells": cells,
        "warmup": config.warmup,
        "iterations": config.iterations,
        "min_iterations": min(config.min_iterations, config.iterations),
        "max_cell_seconds": config.max_cell_seconds,
        "agreement_texts": agreement,
        "real_texts": real_texts or [],
        "real_text_seconds": config.real_text_seconds,
    }


# --- the whole run --------------------------------------------------------------------------------------------------


def _build_cells(tokenizer, source: TextSource, config: ModelBenchConfig) -> list[dict[str, Any]]:
    cells = []
    for seq_len in config.seq_lengths:
        for batch in config.batch_sizes:
            texts = texts_of_length(tokenizer, source.texts, seq_len, batch * DISTINCT_BATCHES, seed=batch)
            cells.append({"batch_size": batch, "seq_len": seq_len, "texts": texts})
    return cells


def _agreement(probabilities: list[list[float]], reference: list[list[float]]) -> dict[str, float]:
    mine, ref = np.asarray(probabilities), np.asarray(reference)
    return {
        "agreement_with_pytorch_fp32": round(float((mine.argmax(-1) == ref.argmax(-1)).mean()), 4),
        "max_abs_prob_diff": round(float(np.abs(mine - ref).max()), 6),
    }


def run_model_benchmark(
    config: ModelBenchConfig,
    *,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Measure every planned backend; returns the results document (rows, backends, environment, settings)."""
    from gamjeong.modeling import load_tokenizer

    started_environment = environment(config.threads)  # date and load average at the start of the run
    source = load_texts(config.data)
    with tempfile.TemporaryDirectory(prefix="gamjeong-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = Path(config.model).expanduser() if config.model else None
        onnx_dirs = [Path(p).expanduser() for p in config.onnx]
        for path in onnx_dirs:
            if not is_exported_dir(path):
                raise GamjeongError(
                    f"'{path}' is not an exported directory (no {ONNX_MODEL_FILE}); pass `gamjeong export` output."
                )
        random_weights = model_dir is None and not onnx_dirs
        model_note = "given directories"
        if random_weights:
            real_size = not config.quick
            if real_size:
                model_dir, how = random_real_size_model(config.cache_dir, source.texts, config.tokenizer, progress)
                model_note = f"distilbert-base-multilingual-cased architecture, random weights ({how})"
            else:
                model_dir = workdir / "tiny-model"
                how = build_random_model_dir(model_dir, source.texts, real_size=False, tokenizer_dir=config.tokenizer)
                model_note = f"tiny DistilBERT (2 layers, dim 32), random weights ({how})"
        if config.quick and random_weights:
            export_root = workdir / "exported"
        elif random_weights:
            export_root = config.cache_dir / RANDOM_MODEL_NAME
        else:
            export_root = config.output / "exported"

        def export_onnx(precision: str) -> Path:
            assert model_dir is not None
            return export_for_benchmark(
                model_dir,
                export_root / f"onnx-{precision}",
                precision,
                random_weights=random_weights,
                progress=progress,
            )

        plans = plan_backends(config, model_dir, onnx_dirs, export_onnx)
        tokenizer_dir = next((p.model_dir for p in plans if p.model_dir is not None), model_dir or onnx_dirs[0])
        tokenizer = load_tokenizer(tokenizer_dir)
        cells = _build_cells(tokenizer, source, config)
        agreement_texts = source.texts[: config.agreement_texts]

        backends: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for plan in plans:
            entry: dict[str, Any] = {"name": plan.name, "model_dir": str(plan.model_dir) if plan.model_dir else None}
            if plan.error:
                backends.append(entry | {"status": "failed", "reason": plan.error})
                progress(f"{plan.name}: failed ({plan.error})")
                continue
            if plan.skip_reason:
                backends.append(entry | {"status": "skipped", "reason": plan.skip_reason})
                progress(f"{plan.name}: skipped ({plan.skip_reason})")
                continue
            progress(f"{plan.name}: measuring {len(cells)} cells ({config.isolation})")
            spec = _spec(plan, config, cells, agreement_texts, source.texts[: config.real_texts])
            try:
                if config.isolation == "subprocess":
                    result = run_isolated(spec, workdir, plan.name)
                else:
                    result = measure_backend(spec, isolated=False)
            except (RuntimeError, GamjeongError) as exc:
                backends.append(entry | {"status": "failed", "reason": str(exc)})
                progress(f"{plan.name}: failed ({exc})")
                continue
            entry |= {k: v for k, v in result.items() if k != "rows"}
            entry["size_on_disk_mb"] = size_on_disk_mb(plan.model_dir, plan.loader)  # type: ignore[arg-type]
            if plan.loader == "onnx":
                entry["export"] = export_summary(plan.model_dir)  # type: ignore[arg-type]
            backends.append(entry)
            rows += result["rows"]

        reference = next((b for b in backends if b["status"] == "ok" and b["name"].startswith(REFERENCE_BACKEND)), None)
        reference_probabilities = reference["probabilities"] if reference is not None else None
        for entry in backends:
            probabilities = entry.pop("probabilities", None)
            if probabilities is None:
                continue
            entry["agreement_texts"] = len(agreement_texts)
            if reference_probabilities is None:
                entry |= {"agreement_with_pytorch_fp32": None, "agreement_note": "pytorch-fp32 was not measured"}
            else:
                entry |= _agreement(probabilities, reference_probabilities)

    return {
        "kind": "model",
        "random_weights": random_weights,
        "note": RANDOM_WEIGHTS_NOTE if random_weights else None,
        "model": model_note,
        "texts": source.description,
        "settings": {
            "batch_sizes": config.batch_sizes,
            "seq_lengths": config.seq_lengths,
            "iterations": config.iterations,
            "min_iterations": config.min_iterations,
            "max_cell_seconds": config.max_cell_seconds,
            "warmup": config.warmup,
            "quick": config.quick,
            "isolation": config.isolation,
            "memory_method": (
                "peak_rss_mb: peak RSS of the backend's own worker process (Python, libraries, model, run); "
                "rss_delta_mb: RSS after load + all cells minus RSS before load"
                if config.isolation == "subprocess"
                else "rss_delta_mb: RSS after load + all cells minus RSS before load, in one shared process "
                "(earlier backends' freed memory can hide part of it); peak RSS not measured"
            ),
            "latency": "per batch: tokenisation (fast tokenizer) + inference (padding, model, softmax); "
            "texts_per_s = batch_size x iterations / total time",
        },
        "environment": started_environment,
        "backends": backends,
        "rows": rows,
    }
