"""int8 quantisation through Optimum's ORTQuantizer, one candidate configuration at a time.

A candidate is the target's `AutoQuantizationConfig` preset (dynamic or static, per-tensor or per-channel) plus the
nodes kept in fp32 (`nodes_to_exclude`). Nodes are grouped the way the accuracy search reasons about them: the
embeddings, each encoder layer (`layer.N`: its weight MatMuls) and whatever else holds quantisable weights.

Every candidate is weights-only int8: a MatMul of two activations (attention's Q·Kᵀ and softmax·V) stays fp32. The
presets would quantise those too, both operands per tensor at run time, and the softmax probabilities then share 256
levels across a whole batch; on the one-epoch e5-small fine-tune that cost 0.7 point of test macro-F1 for no
measurable speed (docs/benchmarks.md). The weights, which are what makes int8 small and fast, are all still int8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gamjeong.errors import GamjeongError
from gamjeong.export.targets import ResolvedTarget, int8_quantization_config

_LAYER = re.compile(r"(?:^|/)(?:layers?|block)[._](\d+)(?:/|$)")


class Approach(str, Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"


class CandidateSpec(BaseModel):
    """One int8 configuration the search may try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    approach: Approach = Approach.DYNAMIC
    per_channel: bool = True
    fp32_groups: tuple[str, ...] = Field((), description="Node groups kept in fp32 (e.g. 'layer.4').")
    nodes_to_exclude: tuple[str, ...] = Field((), description="The ONNX nodes of those groups.")


@dataclass(frozen=True)
class Calibration:
    """Tokenised calibration texts for static int8 and where they came from."""

    dataset: object  # datasets.Dataset with the graph's input columns
    texts: int
    source: str


def group_of(node_name: str) -> str:
    """The group a node belongs to: 'layer.N' inside encoder layer N, 'embeddings', or 'other'."""
    match = _LAYER.search(node_name)
    if match:
        return f"layer.{int(match.group(1))}"
    return "embeddings" if "embedding" in node_name.lower() else "other"


def weight_groups(onnx_path: Path, operators: list[str]) -> dict[str, list[str]]:
    """Nodes of the quantised operator types that carry a weight (an initializer input), by group, in graph order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in operators and any(name in initializers for name in node.input):
            groups.setdefault(group_of(node.name), []).append(node.name)
    return groups


def activation_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes with no weight among their inputs: products of two activations, kept in fp32."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and not any(name in initializers for name in node.input)
    ]


def calibration_set(onnx_path: Path, tokenizer, texts: list[str], max_length: int, source: str) -> Calibration:
    """Tokenised calibration texts as the `datasets.Dataset` ORTQuantizer.fit reads (one unpadded text per step)."""
    from datasets import Dataset
    from optimum.onnxruntime import ORTQuantizer

    encoded = dict(tokenizer(texts, truncation=True, max_length=max_length))
    # XLM-R-style tokenizers return no token_type_ids, but a BERT-type graph (e5) still takes them: feed zeros, as
    # OnnxPredictor does. Columns the graph does not take are dropped by clean_calibration_dataset.
    encoded.setdefault("token_type_ids", [[0] * len(ids) for ids in encoded["input_ids"]])
    quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
    return Calibration(quantizer.clean_calibration_dataset(Dataset.from_dict(encoded)), len(texts), source)


def quantize_candidate(
    onnx_path: Path,
    out: Path,
    spec: CandidateSpec,
    target: ResolvedTarget,
    calibration: Calibration | None = None,
    activation_products: list[str] | None = None,
) -> tuple[Path, dict[str, object]]:
    """Quantise the fp32 graph as `spec` says; the quantised model's path and a description for the manifest.
    `activation_products`: the graph's `activation_matmuls`, when the caller already has them (a search quantises the
    same graph many times; finding them loads the whole graph)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig

    is_static = spec.approach is Approach.STATIC
    if is_static and calibration is None:
        raise GamjeongError("Static int8 needs calibration texts; pass --calibration-data.")
    if activation_products is None:
        activation_products = activation_matmuls(onnx_path)
    quantization_config = int8_quantization_config(
        target.name,
        is_static=is_static,
        per_channel=spec.per_channel,
        nodes_to_exclude=[*activation_products, *spec.nodes_to_exclude],
    )
    quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
    ranges = None
    out.mkdir(parents=True, exist_ok=True)
    try:
        if is_static:
            ranges = quantizer.fit(
                calibration.dataset,  # type: ignore[union-attr]
                AutoCalibrationConfig.minmax(calibration.dataset),  # type: ignore[union-attr]
                onnx_augmented_model_name=out / "augmented_model.onnx",
                operators_to_quantize=quantization_config.operators_to_quantize,
            )
        quantizer.quantize(quantization_config, save_dir=out, calibration_tensors_range=ranges)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else exc.__class__.__name__
        raise GamjeongError(f"Optimum could not quantise the ONNX model ({spec.name}): {first_line}") from exc
    (out / "augmented_model.onnx").unlink(missing_ok=True)
    info: dict[str, object] = {
        "mode": "int8",
        "candidate": spec.name,
        "approach": spec.approach.value,
        "format": quantization_config.format.name,
        "per_channel": quantization_config.per_channel,
        "reduce_range": quantization_config.reduce_range,
        "weights_dtype": quantization_config.weights_dtype.name,
        "activations_dtype": quantization_config.activations_dtype.name,
        "weights_symmetric": quantization_config.weights_symmetric,
        "activations_symmetric": quantization_config.activations_symmetric,
        "operators": [str(getattr(op, "value", op)) for op in quantization_config.operators_to_quantize],
        "preset": f"AutoQuantizationConfig.{target.name}",
        "fp32_groups": list(spec.fp32_groups),
        "nodes_to_exclude": list(spec.nodes_to_exclude),
        "fp32_activation_matmuls": len(activation_products),
        "calibration": (
            {"method": "minmax", "texts": calibration.texts, "source": calibration.source}
            if is_static and calibration is not None
            else None
        ),
    }
    return out / f"{onnx_path.stem}_quantized.onnx", info
