"""What the manifest says about an exported graph, its source and the libraries that made it."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from gamjeong.artifacts import file_sha256
from gamjeong.errors import GamjeongError
from gamjeong.onnx_runtime import INT8_OP_TYPES  # one set: the server reads the quantisation from the graph with it

log = logging.getLogger(__name__)


def graph_description(onnx_path: Path) -> dict[str, object]:
    """Opset and input shapes of the exported graph; batch and sequence must be symbolic (dynamic) axes."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    static = {name: dims for name, dims in inputs.items() if any(not isinstance(d, str) for d in dims)}
    if static:
        raise GamjeongError(
            f"The exported graph has fixed input shapes {static}; it needs dynamic batch and sequence axes."
        )
    outputs = [o.name for o in model.graph.output]
    op_types = Counter(node.op_type for node in model.graph.node)
    int8_nodes = {op: n for op, n in sorted(op_types.items()) if op in INT8_OP_TYPES}
    return {
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "ir_version": model.ir_version,
        "nodes": sum(op_types.values()),
        "int8_nodes": int8_nodes,
    }


def library_versions() -> dict[str, str]:
    """The manifest's `versions`: Python and the libraries that made the export (those installed)."""
    from gamjeong.versions import library_versions as installed_versions

    packages = (
        "gamjeong",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
    )
    return installed_versions(packages)  # type: ignore[return-value]


def source_summary(model_dir: Path, weights: Path) -> dict[str, object]:
    from gamjeong.artifacts import METRICS_FILE

    summary: dict[str, object] = {
        "model_dir": str(model_dir),
        "weights_file": weights.name,
        "weights_sha256": file_sha256(weights),
        "weights_size": weights.stat().st_size,
    }
    metrics_file = model_dir / METRICS_FILE
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            summary["metrics"] = {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignoring unreadable %s", metrics_file)
    return summary
