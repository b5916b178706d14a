"""The one place where ONNX Runtime sessions are built (export parity, evaluation, server and benchmarks)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from gamjeong.errors import GamjeongError

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]
_PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def choose_providers(requested: ProviderChoice = "auto") -> list[str]:
    """CUDA then CPU when a GPU build of onnxruntime is installed and `auto`; a clear error for an unavailable one."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested == "auto":
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    else:
        name = _PROVIDER_NAMES.get(requested)
        if name is None:
            raise GamjeongError(f"Unknown execution provider '{requested}'; choose auto, cuda or cpu.")
        if name not in available:
            raise GamjeongError(
                f"The {name} is not available in this onnxruntime build (available: {', '.join(available)}); "
                "install gamjeong[gpu] (onnxruntime-gpu) on a CUDA machine, or use --provider cpu."
            )
        providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    return providers


def create_session(
    model_path: str | Path,
    *,
    provider: ProviderChoice = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all",
):
    """An InferenceSession with the providers, thread counts and graph optimisation level chosen here."""
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise GamjeongError(f"ONNX model '{path}' does not exist.")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    providers = choose_providers(provider)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types for corrupt files
        raise GamjeongError(f"ONNX Runtime cannot load '{path}' (corrupt or truncated file?): {exc}") from exc
    log.info("onnxruntime session for %s on %s", path.name, session.get_providers()[0])
    return session
