"""Trained model directory -> exported ONNX directory, every step through Hugging Face Optimum.

1. export   `optimum.exporters.onnx.main_export` (task text-classification, dynamic batch and sequence axes)
2. optimise `ORTOptimizer` + `AutoOptimizationConfig` O1..O4 (optional; fp16 is Optimum's fp16 conversion)
3. quantise `ORTQuantizer` + `AutoQuantizationConfig.<target>`: dynamic int8, or static int8 calibrated with
            `AutoCalibrationConfig.minmax` on `--calibration-data`
4. parity   PyTorch vs ONNX through gamjeong.predictor on the same texts; below the threshold the export fails
            unless `force`
5. publish  model.onnx, tokenizer, config.json, parity.json and manifest.json are written to a temporary directory
            next to the output and renamed into place at the very end, so a failure leaves no half-written output.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gamjeong.artifacts import CONFIG_FILE, MANIFEST_FILE, ONNX_MODEL_FILE, PARITY_FILE, describe_files, file_sha256
from gamjeong.errors import GamjeongError
from gamjeong.export.targets import CPU_TARGETS, ResolvedTarget, Target, int8_quantization_config, resolve_target
from gamjeong.labels import LABEL_NAMES

log = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1
DEFAULT_PARITY_THRESHOLDS = {"none": 0.995, "fp16": 0.995, "int8": 0.98}
# Kept with the model: Optimum's own record of the optimisation/quantisation settings (ORTModel reads it too).
ORT_CONFIG_FILE = "ort_config.json"
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


class ExportConfig(BaseModel):
    """Settings of one `gamjeong export` run."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="Trained model directory (config.json with the seven labels, weights, tokenizer).")
    output: Path = Field(description="Directory to create with model.onnx, tokenizer, config, manifest and parity.")
    quantize: Literal["int8", "fp16", "none"] | None = Field(
        None, description="int8 (default for CPU targets), fp16 (default for cuda) or none (fp32)."
    )
    optimize: Literal["none", "O1", "O2", "O3", "O4"] = Field(
        "none", description="Optimum graph optimisation level; O4 (fp16) needs a CUDA GPU."
    )
    target: Target = Field("auto", description="Hardware the int8 settings are chosen for; auto inspects this one.")
    calibration_data: Path | None = Field(None, description="Texts for static int8 calibration (else dynamic).")
    calibration_samples: int = Field(128, ge=1, description="At most this many calibration texts (seeded sample).")
    per_channel: bool = Field(False, description="Per-channel int8 weights (more accurate, slightly larger).")
    parity_data: Path | None = Field(None, description="Texts (and labels) for the parity gate.")
    parity_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Minimum argmax agreement; default 0.995 for fp32/fp16, 0.98 for int8."
    )
    max_parity_texts: int = Field(1000, ge=1, description="At most this many parity texts (seeded sample).")
    force: bool = Field(False, description="Publish even when the parity gate fails (the manifest says so).")
    overwrite: bool = Field(False, description="Replace an existing output directory.")
    opset: int | None = Field(None, ge=11, description="ONNX opset; default: Optimum's choice for the model.")
    seed: int = 0

    def quantization_mode(self, target: ResolvedTarget) -> str:
        if self.quantize is not None:
            return self.quantize
        return "fp16" if target.name == "cuda" else "int8"

    def threshold(self, mode: str) -> float:
        return self.parity_threshold if self.parity_threshold is not None else DEFAULT_PARITY_THRESHOLDS[mode]


Report = Callable[[str], None]


# --- checks before any work ---------------------------------------------------------------------------------------
def _check_output(config: ExportConfig) -> Path:
    output = config.output.expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise GamjeongError(f"Output '{output}' is a file; choose a directory path for --output.")
    if output.is_dir() and any(output.iterdir()) and not config.overwrite:
        raise GamjeongError(
            f"Output directory '{output}' already exists and is not empty; pass --overwrite or choose another --output."
        )
    source = config.model.expanduser().resolve()
    if output == source or source in output.parents:
        raise GamjeongError("The output directory must not be the trained model directory or inside it.")
    return output


def _check_settings(config: ExportConfig, target: ResolvedTarget, mode: str) -> None:
    from gamjeong.onnx_runtime import cuda_available

    if mode == "int8" and target.name not in CPU_TARGETS:
        raise GamjeongError(
            f"int8 quantisation is for CPU targets ({', '.join(CPU_TARGETS)}); use --quantize fp16 or none "
            "for --target cuda."
        )
    if mode == "fp16" and target.name != "cuda":
        raise GamjeongError(
            f"fp16 models are for CUDA GPUs; use --quantize int8 or none for the CPU target {target.name}."
        )
    if config.optimize == "O4":
        if not cuda_available():
            raise GamjeongError(
                "--optimize O4 (fp16 with GPU-only fusions) needs a CUDA GPU with onnxruntime-gpu; "
                "use O1, O2 or O3 on this machine."
            )
        if mode != "fp16":
            raise GamjeongError("--optimize O4 converts the model to fp16; use it with --quantize fp16 (or O3).")
    if config.calibration_data is not None and mode != "int8":
        raise GamjeongError("--calibration-data is for static int8 quantisation; use it with --quantize int8.")


def _load_source(model_dir: Path):
    """Model and tokenizer of a trained directory; one sentence when it has no trained classification head."""
    from transformers import AutoModelForSequenceClassification

    from gamjeong.modeling import WEIGHT_FILES, check_trained_model_dir, load_tokenizer

    path = check_trained_model_dir(model_dir)
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise GamjeongError(f"'{path}' has no model weights ({' or '.join(WEIGHT_FILES)}); it is not a trained model.")
    architectures = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise GamjeongError(
            f"'{path}' holds a {', '.join(architectures) or 'model'} with no sequence-classification head; "
            "export a directory written by `gamjeong train`."
        )
    try:
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(str(path), output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise GamjeongError(f"Could not load the model in '{path}': {exc}") from exc
    missing = loading_info.get("missing_keys") or []
    if missing:
        raise GamjeongError(
            f"'{path}' has no trained weights for {', '.join(sorted(missing)[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; export a directory written by `gamjeong train`."
        )
    model.eval()
    return model, load_tokenizer(path), weights


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hide the tracer and quantiser chatter of torch/transformers/onnxruntime unless debug logging is on."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    import transformers

    previous_verbosity = transformers.logging.get_verbosity()
    root = logging.getLogger()
    previous_level = root.level
    transformers.logging.set_verbosity_error()
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs "failed to infer the type" on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(previous_verbosity)
        root.setLevel(previous_level)


# --- the Optimum steps --------------------------------------------------------------------------------------------
def _export_onnx(model_dir: Path, work: Path, opset: int | None) -> Path:
    from optimum.exporters.onnx import main_export

    out = work / "onnx"
    try:
        main_export(
            str(model_dir),
            output=out,
            task="text-classification",
            opset=opset,
            device="cpu",
            local_files_only=True,
            # our parity gate below checks the model through the predictor interface on real texts instead
            do_validation=False,
        )
    except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise GamjeongError(f"Optimum could not export '{model_dir}' to ONNX: {_first_line(exc)}") from exc
    return out / ONNX_MODEL_FILE


def _optimize(onnx_path: Path, work: Path, level: str, *, fp16: bool, for_gpu: bool) -> tuple[Path, dict[str, object]]:
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    # fp16 is Optimum's fp16 conversion inside the optimiser; on its own it rides on the basic O1 level
    applied = level if level != "none" else "O1"
    extra = {"fp16": True} if fp16 and applied != "O4" else {}
    optimization_config = AutoOptimizationConfig.with_optimization_level(applied, for_gpu=for_gpu, **extra)
    out = work / "optimized"
    try:
        ORTOptimizer.from_pretrained(onnx_path.parent).optimize(optimization_config, save_dir=out)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise GamjeongError(
            f"Optimum could not optimise the ONNX model at level {applied}: {_first_line(exc)}"
        ) from exc
    info = {
        "level": applied,
        "requested": level,
        "for_gpu": optimization_config.optimize_for_gpu,
        "fp16": bool(optimization_config.fp16),
        "transformers_specific": optimization_config.enable_transformers_specific_optimizations,
        "gelu_approximation": optimization_config.enable_gelu_approximation,
    }
    return out / f"{onnx_path.stem}_optimized.onnx", info


def _calibration_dataset(quantizer, tokenizer, texts: list[str], max_length: int):
    """Tokenised calibration texts as the `datasets.Dataset` ORTQuantizer.fit reads (one unpadded text per step)."""
    from datasets import Dataset

    encoded = dict(tokenizer(texts, truncation=True, max_length=max_length))
    # XLM-R-style tokenizers return no token_type_ids, but a BERT-type graph (e5) still takes them: feed zeros, as
    # OnnxPredictor does. Columns the graph does not take are dropped below.
    encoded.setdefault("token_type_ids", [[0] * len(ids) for ids in encoded["input_ids"]])
    return quantizer.clean_calibration_dataset(Dataset.from_dict(encoded))  # keeps only the model's inputs


def _quantize_int8(
    onnx_path: Path,
    work: Path,
    config: ExportConfig,
    target: ResolvedTarget,
    tokenizer,
    max_length: int,
) -> tuple[Path, dict[str, object]]:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig

    from gamjeong.export.parity import read_texts_file

    is_static = config.calibration_data is not None
    quantization_config = int8_quantization_config(target.name, is_static=is_static, per_channel=config.per_channel)
    quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
    calibration: dict[str, object] | None = None
    ranges = None
    if is_static:
        import numpy as np

        texts, _ = read_texts_file(Path(config.calibration_data))  # type: ignore[arg-type]
        if len(texts) > config.calibration_samples:
            rng = np.random.default_rng(config.seed)
            texts = [texts[i] for i in sorted(rng.choice(len(texts), config.calibration_samples, replace=False))]
        dataset = _calibration_dataset(quantizer, tokenizer, texts, max_length)
        calibration_config = AutoCalibrationConfig.minmax(dataset)
        ranges = quantizer.fit(
            dataset,
            calibration_config,
            onnx_augmented_model_name=work / "augmented_model.onnx",
            operators_to_quantize=quantization_config.operators_to_quantize,
        )
        calibration = {"method": "minmax", "texts": len(texts), "source": str(Path(config.calibration_data).resolve())}
    out = work / "quantized"
    try:
        quantizer.quantize(quantization_config, save_dir=out, calibration_tensors_range=ranges)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise GamjeongError(f"Optimum could not quantise the ONNX model: {_first_line(exc)}") from exc
    info: dict[str, object] = {
        "mode": "int8",
        "approach": "static" if is_static else "dynamic",
        "format": quantization_config.format.name,
        "per_channel": quantization_config.per_channel,
        "reduce_range": quantization_config.reduce_range,
        "weights_dtype": quantization_config.weights_dtype.name,
        "activations_dtype": quantization_config.activations_dtype.name,
        "weights_symmetric": quantization_config.weights_symmetric,
        "activations_symmetric": quantization_config.activations_symmetric,
        "operators": [str(getattr(op, "value", op)) for op in quantization_config.operators_to_quantize],
        "preset": f"AutoQuantizationConfig.{target.name}",
        "calibration": calibration,
    }
    return out / f"{onnx_path.stem}_quantized.onnx", info


# --- describing the result ----------------------------------------------------------------------------------------
def _graph_description(onnx_path: Path) -> dict[str, object]:
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


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for package in (
        "gamjeong",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def _source_summary(model_dir: Path, weights: Path) -> dict[str, object]:
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


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _write_error(exc: OSError, output: Path) -> GamjeongError:
    if exc.errno == errno.ENOSPC:
        return GamjeongError(
            f"The disk is full (no space left on device) while writing the export next to '{output}'; "
            "free some space or choose another --output."
        )
    return GamjeongError(f"Could not write the export next to '{output}': {exc.strerror or exc}.")


def _publish(staged: Path, output: Path, scratch: Path) -> None:
    """Rename the finished directory into place (replacing an old output only now, when the new one is complete)."""
    previous = scratch / "previous-output"
    if output.exists():
        output.rename(previous)
    try:
        staged.rename(output)
    except OSError:
        if previous.exists():
            previous.rename(output)
        raise


# --- the whole export ---------------------------------------------------------------------------------------------
def export_model(config: ExportConfig, report: Report | None = None) -> Path:
    """Export, optimise, quantise and parity-check a trained model; return the published output directory."""
    say: Report = report or log.info
    output = _check_output(config)
    mode_hint = config.quantize
    target = resolve_target(config.target, quantize=mode_hint)
    mode = config.quantization_mode(target)
    say(f"target: {target.describe()}; quantisation: {mode}; optimisation: {config.optimize}")
    _check_settings(config, target, mode)
    model, tokenizer, weights = _load_source(config.model)
    model_dir = config.model.expanduser().resolve()

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.export-", dir=output.parent))
    except OSError as exc:
        raise _write_error(exc, output) from exc
    try:
        with _quiet_libraries():
            manifest = _build(config, model_dir, model, tokenizer, weights, target, mode, scratch, say)
        _publish(scratch / "final", output, scratch)
    except OSError as exc:
        raise _write_error(exc, output) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parity = manifest["parity"]
    say(
        f"exported {output / ONNX_MODEL_FILE} ({manifest['files'][ONNX_MODEL_FILE]['size'] / 1e6:.1f} MB, "
        f"{'fp32' if mode == 'none' else mode}); "
        f"parity: argmax agreement {parity['argmax_agreement']:.4f} on {parity['texts']} texts, "
        f"max |Δp| {parity['max_abs_prob_diff']:.4f}"
    )
    return output


def _build(
    config: ExportConfig,
    model_dir: Path,
    model,
    tokenizer,
    weights: Path,
    target: ResolvedTarget,
    mode: str,
    scratch: Path,
    say: Report,
) -> dict:
    from gamjeong.export.parity import compare_predictors, load_parity_texts
    from gamjeong.onnx_runtime import create_session, cuda_available
    from gamjeong.predictor import OnnxPredictor, TorchPredictor

    work = scratch / "work"
    work.mkdir()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    onnx_path = _export_onnx(model_dir, work, config.opset)
    timings["export_s"] = round(time.perf_counter() - start, 3)
    say(f"exported fp32 ONNX with Optimum in {timings['export_s']:.1f} s")

    optimization: dict[str, object] = {"level": "none"}
    if config.optimize != "none" or mode == "fp16":
        start = time.perf_counter()
        onnx_path, optimization = _optimize(
            onnx_path, work, config.optimize, fp16=mode == "fp16", for_gpu=target.name == "cuda"
        )
        timings["optimize_s"] = round(time.perf_counter() - start, 3)
        fp16_note = " with fp16 conversion" if mode == "fp16" else ""
        say(f"optimised at level {optimization['level']}{fp16_note} in {timings['optimize_s']:.1f} s")

    reference = TorchPredictor(model, tokenizer, device="auto")
    quantization: dict[str, object] = {"mode": mode}
    if mode == "int8":
        start = time.perf_counter()
        onnx_path, quantization = _quantize_int8(onnx_path, work, config, target, tokenizer, reference.max_length)
        timings["quantize_s"] = round(time.perf_counter() - start, 3)
        say(f"quantised to {quantization['approach']} int8 ({quantization['preset']}) in {timings['quantize_s']:.1f} s")
    elif mode == "fp16":
        quantization = {"mode": "fp16", "approach": "float16 conversion (inputs and outputs kept fp32)"}
        if not cuda_available():
            say(
                "warning: no CUDA GPU here, so the fp16 model's parity is checked on the CPU (slow, but the same numbers)"
            )

    final = scratch / "final"
    final.mkdir()
    shutil.copyfile(onnx_path, final / ONNX_MODEL_FILE)
    model.config.save_pretrained(final)
    tokenizer.save_pretrained(final)
    if (onnx_path.parent / ORT_CONFIG_FILE).is_file():
        shutil.copyfile(onnx_path.parent / ORT_CONFIG_FILE, final / ORT_CONFIG_FILE)
    graph = _graph_description(final / ONNX_MODEL_FILE)
    if mode == "int8" and not graph["int8_nodes"]:
        raise GamjeongError(
            "Quantisation left no int8 operators in the graph; try --quantize none or another --target."
        )

    start = time.perf_counter()
    texts = load_parity_texts(config.parity_data, model_dir, max_texts=config.max_parity_texts, seed=config.seed)
    # checked where it will run: a CPU target on the CPU provider even when a GPU is present
    session = create_session(
        final / ONNX_MODEL_FILE, provider="cuda" if target.name == "cuda" and cuda_available() else "cpu"
    )
    candidate = OnnxPredictor(session, tokenizer, precision="fp32" if mode == "none" else mode)
    parity = compare_predictors(reference, candidate, texts)
    timings["parity_s"] = round(time.perf_counter() - start, 3)
    threshold = config.threshold(mode)
    agreement = float(parity["argmax_agreement"])  # type: ignore[arg-type]
    passed = agreement >= threshold
    parity.update({"threshold": threshold, "passed": passed})
    if not passed and not config.force:
        raise GamjeongError(
            f"Parity gate failed: the ONNX {mode} model agrees with PyTorch on {agreement:.2%} of {parity['texts']} "
            f"texts, below the {threshold:.2%} threshold (PyTorch's top-two margin on the disagreeing texts is at "
            f"most {parity['max_reference_margin_of_disagreements']:.4f}); try --quantize none, --calibration-data, "
            "--per-channel, or pass --force to publish it anyway."
        )
    if not passed:
        say(f"warning: parity gate failed ({agreement:.2%} < {threshold:.2%}) but --force publishes the model anyway")
    write_json(final / PARITY_FILE, parity)

    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_file": ONNX_MODEL_FILE,
        "labels": list(LABEL_NAMES),
        "source": _source_summary(model_dir, weights),
        "task": "text-classification",
        **graph,
        "quantization": quantization,
        "optimization": optimization,
        "target": {"name": target.name, "requested": target.requested, "reason": target.reason},
        "max_length": reference.max_length,
        "versions": _library_versions(),
        "timings": timings,
        "parity": parity,
        "forced": bool(config.force and not passed),
        "files": describe_files(final),
    }
    write_json(final / MANIFEST_FILE, manifest)
    return manifest
