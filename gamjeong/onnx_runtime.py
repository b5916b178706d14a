"""The one place where ONNX Runtime sessions are built (export parity, evaluation, server and benchmarks)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from gamjeong.errors import GamjeongError

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
_PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# Operators that only exist in a quantised graph (dynamic QOperator and static QDQ formats)
INT8_OP_TYPES = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "QAttention",
        "QEmbedLayerNormalization",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)


def graph_precision(model_path: str | Path) -> str:
    """ "int8", "fp16" or "fp32", read from the graph itself: quantisation operators make it int8, float16 weights fp16.

    What the server reports comes from here, not from manifest.json's description: the manifest's sha256 list covers
    every file but the manifest, so its descriptive fields are only as trustworthy as whoever last edited it.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    if any(node.op_type in INT8_OP_TYPES for node in graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16"
    return "fp32"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_available() -> bool:
    """True when onnxruntime-gpu is installed and offers the CUDA execution provider."""
    return "CUDAExecutionProvider" in available_providers()


def choose_providers(requested: ProviderChoice | str = "auto") -> list[str]:
    """CUDA then CPU when a GPU build of onnxruntime is installed and `auto`; a clear error for an unavailable one."""
    available = available_providers()
    if requested == "auto":
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    else:
        name = _PROVIDER_NAMES.get(str(requested))
        if name is None:
            raise GamjeongError(f"Unknown execution provider '{requested}'; choose auto, cuda or cpu.")
        if name not in available:
            raise GamjeongError(
                f"The {name} is not available in this onnxruntime build (available: {', '.join(available)}); "
                "install gamjeong[gpu] (onnxruntime-gpu) on a CUDA machine, or use --provider cpu."
            )
        providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    log.info("onnxruntime providers: requested %s, available %s, using %s", requested, available, providers)
    return providers


def create_session(
    model_path: str | Path,
    *,
    provider: ProviderChoice | str = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    graph_optimization: GraphOptimization = "all",
    intra_op_spinning: bool | None = None,
    optimized_model_path: str | Path | None = None,
):
    """An InferenceSession with the providers, thread counts and graph optimisation level chosen here.

    Thread counts of None or 0 let ONNX Runtime use one thread per physical core; `graph_optimization="all"` applies
    ONNX Runtime's own fusions at load time (an exported model needs no pre-optimisation to get them).
    `optimized_model_path` saves the graph as the session runs it (after partitioning: with the Memcpy nodes a CUDA
    session adds), for `placement_report`.
    """
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise GamjeongError(f"ONNX model '{path}' does not exist.")
    if graph_optimization not in ("disable", "basic", "extended", "all"):
        raise GamjeongError(
            f"Unknown graph optimisation level '{graph_optimization}'; choose disable, basic, extended or all."
        )
    for name, value in (("intra-op", intra_op_threads), ("inter-op", inter_op_threads)):
        if value is not None and value < 0:
            raise GamjeongError(f"The {name} thread count must be 0 (automatic) or more, not {value}.")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    if intra_op_spinning is not None:
        # Intra-op threads spin-wait for the next operator by default, and keep spinning after a call ends. True: they
        # spin while a call runs (one short text: 4.5 instead of 6.2 ms on 2 cores, as fast as always spinning) and
        # stop when it ends, so an idle or slow-fed server burns no core (0.38 cores at one call per 20 ms, like no
        # spinning, against 1.24). False: never spin, for cores shared with other work or under a CPU quota, where a
        # spinning thread takes the CPU the others need (docs/benchmarks.md). None keeps ONNX Runtime's default.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra_op_spinning else "0")
        if intra_op_spinning:
            options.add_session_config_entry("session.force_spinning_stop", "1")
    providers = choose_providers(provider)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types for corrupt files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise GamjeongError(
            f"ONNX Runtime cannot load '{path}' (corrupt or truncated file? re-run `gamjeong export`): {first_line}"
        ) from exc
    used = session.get_providers()[0]
    if providers[0] != used:
        # onnxruntime-gpu falls back to CPU silently when the CUDA libraries cannot be loaded
        if provider == "cuda":
            raise GamjeongError(
                f"The {providers[0]} could not be initialised (CUDA or cuDNN libraries missing?); "
                "check the CUDA installation or use --provider cpu."
            )
        log.warning("onnxruntime could not start %s; running %s on %s", providers[0], path.name, used)
    log.info(
        "onnxruntime session for %s on %s (graph optimisation %s, intra-op threads %s, inter-op threads %s)",
        path.name,
        used,
        graph_optimization,
        intra_op_threads or "auto",
        inter_op_threads or "auto",
    )
    return session


def placement_report(model_path: str | Path, *, provider: ProviderChoice | str = "auto") -> dict[str, object]:
    """What a session on `provider` makes of the model: its node count by operator once ONNX Runtime has optimised and
    partitioned it, and how many Memcpy nodes it added. On CUDA those are the host<->device copies around the shape
    arithmetic ONNX Runtime places on the CPU (each one a copy and a stream sync per call, and no CUDA graph while any
    is left); on the CPU there are none. docs/cuda-and-tokenisation.md says what they were on which export."""
    import tempfile
    from collections import Counter

    import onnx

    with tempfile.TemporaryDirectory(prefix="gamjeong-placement-") as scratch:
        saved = Path(scratch) / "optimized.onnx"
        session = create_session(model_path, provider=provider, optimized_model_path=saved)
        graph = onnx.load(str(saved), load_external_data=False).graph
    operators = Counter(node.op_type for node in graph.node)
    memcpy = {op: n for op, n in operators.items() if op.startswith("Memcpy")}
    return {
        "provider": session.get_providers()[0],
        "nodes": sum(operators.values()),
        "memcpy_nodes": sum(memcpy.values()),
        "memcpy": memcpy,
        "operators": dict(operators.most_common()),
    }
