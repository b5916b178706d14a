"""Trained model directory -> exported ONNX directory, every step through Hugging Face Optimum.

1. export   `optimum.exporters.onnx.main_export` (task text-classification, dynamic batch and sequence axes)
2. optimise `ORTOptimizer` + `AutoOptimizationConfig` O1..O4 (optional; fp16 is Optimum's fp16 conversion)
3. quantise `ORTQuantizer` + `AutoQuantizationConfig.<target>` (export/quantize.py), candidates searched in order
            of expected speed until one passes the gate (export/search.py)
4. parity   PyTorch (run once) vs ONNX through gamjeong.predictor on the same texts, judged by export/gate.py; a
            failed gate stops the export unless `force`
5. publish  model.onnx, tokenizer, config.json, parity.json and manifest.json are written to a temporary directory
            next to the output and renamed into place at the very end, so a failure leaves no half-written output.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gamjeong.artifacts import CONFIG_FILE, ONNX_MODEL_FILE, PARITY_FILE, Manifest, describe_files
from gamjeong.errors import GamjeongError, QualityGateError
from gamjeong.export.describe import graph_description, library_versions, source_summary
from gamjeong.export.gate import GateDecision, GateRule, GateSettings
from gamjeong.export.targets import CPU_TARGETS, ResolvedTarget, Target, resolve_target
from gamjeong.labels import LABEL_NAMES

log = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1
# Raw argmax agreement floors. fp32/fp16 compute the same maths as PyTorch: near-total agreement or a bug. int8 has
# none by default: it is judged on quality and on the texts PyTorch is confident about (export/gate.py says why).
DEFAULT_PARITY_THRESHOLDS: dict[str, float | None] = {"none": 0.995, "fp16": 0.995, "int8": None}
# Kept with the model: Optimum's own record of the optimisation/quantisation settings (ORTModel reads it too).
ORT_CONFIG_FILE = "ort_config.json"


class ExportConfig(BaseModel):
    """Settings of one `gamjeong export` run."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="Trained model directory (config.json with the seven labels, weights, tokenizer).")
    output: Path = Field(description="Directory to create with model.onnx, tokenizer, config, manifest and parity.")
    quantize: Literal["int8", "fp16", "none"] | None = Field(
        None, description="int8 (default for CPU targets), fp16 (default for cuda) or none (fp32)."
    )
    optimize: Literal["none", "O1", "O2", "O3", "O4"] | None = Field(
        None, description="Optimum graph optimisation level; default O4 (fp16 + fusions) for cuda, none otherwise."
    )
    target: Target = Field("auto", description="Hardware the int8 settings are chosen for; auto inspects this one.")
    calibration_data: Path | None = Field(None, description="Texts for static int8 calibration (else dynamic).")
    calibration_samples: int = Field(128, ge=1, description="At most this many calibration texts (seeded sample).")
    per_channel: bool = Field(True, description="Per-channel int8 weights (as fast, far closer to fp32).")
    parity_data: Path | None = Field(None, description="Texts (and labels) for the parity gate.")
    parity_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Minimum raw argmax agreement; default 0.995 for fp32/fp16, none for int8."
    )
    max_quality_drop: float = Field(
        1.0, ge=0.0, le=100.0, description="int8: largest accuracy or macro-F1 drop below PyTorch, in points."
    )
    confident_margin: float = Field(
        0.2, ge=0.0, le=1.0, description="int8: PyTorch top-two margin of a confident text."
    )
    min_confident_agreement: float = Field(
        0.99, ge=0.0, le=1.0, description="int8: argmax agreement required on the confident texts."
    )
    drop_confidence: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="int8: a drop beyond the tolerance must show in this share of paired bootstrap resamples to fail.",
    )
    search: bool = Field(
        True, description="int8: try fallbacks (fp32 for the most sensitive layers) until the gate passes."
    )
    max_candidates: int = Field(5, ge=1, description="int8 search: at most this many candidates judged on all texts.")
    sensitivity_texts: int = Field(500, ge=1, description="int8 search: texts of each sensitivity run.")
    max_parity_texts: int = Field(1000, ge=1, description="At most this many parity texts (seeded sample).")
    force: bool = Field(False, description="Publish even when the parity gate fails (the manifest says so).")
    overwrite: bool = Field(False, description="Replace an existing output directory.")
    opset: int | None = Field(None, ge=11, description="ONNX opset; default: Optimum's choice for the model.")
    seed: int = 0

    def quantization_mode(self, target: ResolvedTarget) -> str:
        if self.quantize is not None:
            return self.quantize
        return "fp16" if target.name == "cuda" else "int8"

    def optimization_level(self, target: ResolvedTarget, mode: str) -> str:
        """The level asked for, else O4 for fp16 on CUDA: its fused Attention/SkipLayerNorm/FastGelu replace the
        int64 shape arithmetic ONNX Runtime would otherwise run on the CPU between GPU kernels
        (docs/cuda-and-tokenisation.md), else none."""
        if self.optimize is not None:
            return self.optimize
        return "O4" if target.name == "cuda" and mode == "fp16" else "none"

    def gate_settings(self, mode: str) -> GateSettings:
        """The gate's rule for this precision: quality and confident agreement for int8, agreement otherwise."""
        floor = self.parity_threshold if self.parity_threshold is not None else DEFAULT_PARITY_THRESHOLDS[mode]
        return GateSettings(
            rule=GateRule.QUALITY if mode == "int8" else GateRule.AGREEMENT,
            min_agreement=floor,
            max_quality_drop=self.max_quality_drop / 100,
            confident_margin=self.confident_margin,
            min_confident_agreement=self.min_confident_agreement,
            drop_confidence=self.drop_confidence,
            seed=self.seed,
        )


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
    if mode == "int8" and target.name not in CPU_TARGETS:
        raise GamjeongError(
            f"int8 quantisation is for CPU targets ({', '.join(CPU_TARGETS)}); use --quantize fp16 or none "
            "for --target cuda."
        )
    if mode == "fp16" and target.name != "cuda":
        raise GamjeongError(
            f"fp16 models are for CUDA GPUs; use --quantize int8 or none for the CPU target {target.name}."
        )
    if config.optimize == "O4" and (mode != "fp16" or target.name != "cuda"):
        # O4 itself builds without a GPU (Optimum's fusions are graph rewrites; see _build), but its model is for one
        raise GamjeongError(
            "--optimize O4 makes an fp16 model for CUDA GPUs; use it with --target cuda --quantize fp16 "
            f"(this export is {mode} for {target.name}), or use O1, O2 or O3."
        )
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
    level = config.optimization_level(target, mode)
    say(f"target: {target.describe()}; quantisation: {mode}; optimisation: {level}")
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
            manifest = _build(config, model_dir, model, tokenizer, weights, target, mode, level, scratch, say)
        _publish(scratch / "final", output, scratch)
    except OSError as exc:
        raise _write_error(exc, output) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parity = manifest.parity
    say(
        f"exported {output / ONNX_MODEL_FILE} ({manifest.files[ONNX_MODEL_FILE].size / 1e6:.1f} MB, "
        f"{manifest.precision}); parity on {parity.texts} texts: argmax agreement "
        f"{parity.argmax_agreement:.4f}, on confident texts {parity.confident_agreement:.4f}, "
        f"max |Δp| {parity.max_abs_prob_diff:.4f}"
    )
    return output


def _calibration(config: ExportConfig, onnx_path: Path, tokenizer, max_length: int):
    """The seeded sample of --calibration-data texts, tokenised for static int8 (None without the option)."""
    if config.calibration_data is None:
        return None
    import numpy as np

    from gamjeong.export.parity import read_texts_file
    from gamjeong.export.quantize import calibration_set

    texts, _ = read_texts_file(Path(config.calibration_data))
    if len(texts) > config.calibration_samples:
        rng = np.random.default_rng(config.seed)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), config.calibration_samples, replace=False))]
    source = str(Path(config.calibration_data).resolve())
    return calibration_set(onnx_path, tokenizer, texts, max_length, source)


def _gate_error(mode: str, decision: GateDecision, search: dict[str, object] | None) -> QualityGateError:
    """One sentence: what failed, on which candidate, and what to do."""
    figures = decision.figures
    best = f" the best of {len(search['candidates'])} candidates, '{search['chosen']}'," if search else ""  # type: ignore[arg-type]
    model = "int8 model" if mode == "int8" else f"ONNX {'fp32' if mode == 'none' else mode} model"
    return QualityGateError(
        f"Parity gate failed: on {figures['texts']} texts{best} the {model}'s {'; '.join(decision.reasons)} "
        f"(raw agreement {figures['argmax_agreement']:.2%}); export with --quantize none (fp32) "
        "or pass --force to publish it anyway."
    )


def _build(
    config: ExportConfig,
    model_dir: Path,
    model,
    tokenizer,
    weights: Path,
    target: ResolvedTarget,
    mode: str,
    level: str,
    scratch: Path,
    say: Report,
) -> Manifest:
    from gamjeong.export.gate import decide
    from gamjeong.export.parity import load_parity_texts
    from gamjeong.export.search import CandidateRunner, SearchSettings, search
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
    if level != "none" or mode == "fp16":
        if target.name == "cuda" and not cuda_available():
            # ONNX Runtime's own level-2 pass is skipped without the CUDA provider (its optimizer logs "There is no
            # gpu"); Optimum's fusions still apply, and a CUDA session runs that pass when it loads the model.
            say("note: no CUDA GPU here: Optimum's fusions are applied, ONNX Runtime's CUDA ones when the model loads")
        start = time.perf_counter()
        onnx_path, optimization = _optimize(onnx_path, work, level, fp16=mode == "fp16", for_gpu=target.name == "cuda")
        timings["optimize_s"] = round(time.perf_counter() - start, 3)
        fp16_note = " with fp16 conversion" if mode == "fp16" else ""
        say(f"optimised at level {optimization['level']}{fp16_note} in {timings['optimize_s']:.1f} s")

    # PyTorch runs once; every candidate is judged against these probabilities
    start = time.perf_counter()
    texts = load_parity_texts(config.parity_data, model_dir, max_texts=config.max_parity_texts, seed=config.seed)
    reference = TorchPredictor(model, tokenizer, device="auto")
    reference_probs = reference.predict_proba(texts.texts)
    timings["reference_s"] = round(time.perf_counter() - start, 3)
    gate = config.gate_settings(mode)
    search_summary: dict[str, object] | None = None
    if mode == "int8":
        start = time.perf_counter()
        runner = CandidateRunner(
            onnx_path,
            work,
            target,
            tokenizer,
            texts,
            reference_probs,
            gate,
            max_length=reference.max_length,
            calibration=_calibration(config, onnx_path, tokenizer, reference.max_length),
        )
        settings = SearchSettings(
            enabled=config.search,
            # --force publishes a failing export anyway: minutes of fp32 fallbacks would buy nothing it asked for
            fallbacks=not config.force,
            max_candidates=config.max_candidates,
            sensitivity_texts=config.sensitivity_texts,
            seed=config.seed,
        )
        outcome = search(
            runner, settings, per_channel=config.per_channel, static=config.calibration_data is not None, say=say
        )
        timings["quantize_and_search_s"] = round(time.perf_counter() - start, 3)
        onnx_path, decision = outcome.chosen.path, outcome.chosen.decision
        search_summary = outcome.summary()
        quantization: dict[str, object] = {**outcome.chosen.info, "latency_ms_1x32": outcome.chosen.latency_ms}
        say(f"int8 candidate '{outcome.chosen.spec.name}' chosen after {outcome.wall_s:.1f} s of search")
    else:
        quantization = {"mode": mode}
        if mode == "fp16":
            quantization["approach"] = "float16 conversion (inputs and outputs kept fp32)"
            if not cuda_available():
                say("warning: no CUDA GPU here, so the fp16 model's parity is checked on the CPU (slow, same numbers)")
        start = time.perf_counter()
        # checked where it will run: a CPU target on the CPU provider even when a GPU is present
        session = create_session(onnx_path, provider="cuda" if target.name == "cuda" and cuda_available() else "cpu")
        candidate = OnnxPredictor(session, tokenizer, precision="fp32" if mode == "none" else mode)
        decision = decide(reference_probs, candidate.predict_proba(texts.texts), texts.labels, gate)
        timings["parity_s"] = round(time.perf_counter() - start, 3)

    final = scratch / "final"
    final.mkdir()
    shutil.copyfile(onnx_path, final / ONNX_MODEL_FILE)
    model.config.save_pretrained(final)
    tokenizer.save_pretrained(final)
    if (onnx_path.parent / ORT_CONFIG_FILE).is_file():
        shutil.copyfile(onnx_path.parent / ORT_CONFIG_FILE, final / ORT_CONFIG_FILE)
    graph = graph_description(final / ONNX_MODEL_FILE)
    if mode == "int8" and not graph["int8_nodes"]:
        raise GamjeongError(
            "Quantisation left no int8 operators in the graph; try --quantize none or another --target."
        )

    parity: dict[str, object] = {
        "source": texts.source,
        "reference_backend": reference.backend,
        "candidate_backend": f"onnx-{'fp32' if mode == 'none' else mode}",
        **decision.figures,
        "threshold": gate.threshold(),
        "passed": decision.passed,
        "reasons": decision.reasons,
    }
    if search_summary is not None:
        parity["search"] = search_summary
    if not decision.passed and not config.force:
        raise _gate_error(mode, decision, search_summary)
    if not decision.passed:
        say(f"warning: parity gate failed ({'; '.join(decision.reasons)}) but --force publishes the model anyway")
    write_json(final / PARITY_FILE, parity)

    manifest = Manifest.model_validate(
        {
            "format_version": MANIFEST_FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_file": ONNX_MODEL_FILE,
            "labels": list(LABEL_NAMES),
            "source": source_summary(model_dir, weights),
            "task": "text-classification",
            **graph,
            "quantization": quantization,
            "optimization": optimization,
            "target": {"name": target.name, "requested": target.requested, "reason": target.reason},
            "max_length": reference.max_length,
            "versions": library_versions(),
            "timings": timings,
            "parity": parity,
            "forced": bool(config.force and not decision.passed),
            "files": describe_files(final),
        }
    )
    manifest.write(final)
    return manifest
