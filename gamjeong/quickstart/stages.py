"""Stages 2, 3, 4 and 6: train, export, quality on held-out data, latency. Each drives its own subpackage's public API."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from gamjeong.errors import QualityGateError
from gamjeong.quickstart.data import NATIVE_YARDSTICK
from gamjeong.quickstart.display import quality_tables
from gamjeong.quickstart.plan import UNTRAINED_MARK, BaseChoice, QuickstartConfig, TrainingBudget

if TYPE_CHECKING:
    from gamjeong.quickstart.display import StageDisplay

BASE_MODEL_DIR, MODEL_DIR, BENCH_DIR = "base-model", "model", "bench"
EXPORT_DIRS = {"int8": "onnx-int8", "none": "onnx-fp32"}


# --- stage 2: train ---------------------------------------------------------------------------------------------------
def build_random_base(config: QuickstartConfig, budget: TrainingBudget, data_dir: Path, destination: Path) -> str:
    """A randomly initialised DistilBERT (real size, or tiny for the tiny budget) and a WordPiece tokenizer trained
    on the training split, saved as a base-model directory that training loads like any other; returns a description."""
    import pandas as pd

    from gamjeong.modeling import save_random_model, train_wordpiece_tokenizer

    texts = pd.read_csv(data_dir / "train.csv")["text"].astype(str).tolist()
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=budget.vocab_size, model_max_length=budget.max_length)
    model = save_random_model(destination, tokenizer, real_size=budget.real_size, seed=config.seed)
    size = "real-size distilbert-base-multilingual-cased architecture" if budget.real_size else "tiny DistilBERT"
    params = sum(p.numel() for p in model.parameters())
    return f"random base: {size}, {params / 1e6:.1f} M parameters, vocabulary {len(tokenizer)}"


def train_model(
    config: QuickstartConfig, budget: TrainingBudget, base: BaseChoice, data_dir: Path, out: Path, ui: StageDisplay
) -> dict[str, Any]:
    from gamjeong.artifacts import METRICS_FILE
    from gamjeong.training.train import TrainConfig, train

    base_name = base.name
    if base.untrained:
        ui.warn(
            f"No pretrained base model can be had ({base.note}), so quickstart continues with a randomly initialised "
            "model and a tokenizer trained on the data: its predictions mean nothing, but the pipeline, the server "
            "and the timings are real."
        )
        with ui.working("training a WordPiece tokenizer on the data and building a random-weight model"):
            ui.say(build_random_base(config, budget, data_dir, out / BASE_MODEL_DIR))
        base_name = str(out / BASE_MODEL_DIR)
    time_budget = config.time_budget_minutes if budget.timed else None
    length = f"{time_budget:g} min" if time_budget else f"{budget.epochs:g} epochs"
    if budget.max_steps is not None:
        length = f"{budget.max_steps} steps"
    ui.say(
        f"base {escape(base_name)}; budget {budget.name}: {budget.about} - {length}, batch {budget.batch_size}, "
        f"max_length {budget.max_length}, learning rate {budget.learning_rate:g}"
        + (", word embeddings frozen" if budget.freeze_embeddings else "")
    )
    train_config = TrainConfig(
        data=data_dir,
        output=out / MODEL_DIR,
        base_model=base_name,
        epochs=budget.epochs,
        max_steps=budget.max_steps,
        time_budget_minutes=time_budget,
        # A short fixed run is evaluated (and checkpointed) once, at its end: checkpoints of a real-size model are slow.
        eval_steps=budget.max_steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        max_length=budget.max_length,
        freeze_embeddings=budget.freeze_embeddings,
        seed=config.seed,
        overwrite=True,
        progress=False,
    )
    with ui.working(f"fine-tuning for {length}"):
        model_dir = Path(train(train_config))
    metrics = json.loads((model_dir / METRICS_FILE).read_text(encoding="utf-8"))
    training = metrics.get("training", {})
    plan = training.get("time_budget") or {}
    if plan:
        planned = (
            f"{plan['seconds_per_step']:.2f} s per step, {plan['planned_steps']} planned"
            if plan.get("planned_steps")
            else "the budget ran out before the step time was measured"
        )
        ui.say(
            f"{training.get('global_step')} steps in {training.get('train_runtime_s', 0):.0f} s ({planned}; "
            f"stopped by {plan.get('stopped_by')}), best checkpoint {training.get('best_checkpoint')}"
        )
    ui.say(
        f"PyTorch on the test split: accuracy {metrics.get('accuracy', float('nan')):.3f}, "
        f"macro-F1 {metrics.get('macro_f1', float('nan')):.3f}"
        + (f"  [yellow]({UNTRAINED_MARK}: random base, chance level expected)[/]" if base.untrained else "")
    )
    return {
        "dir": str(model_dir),
        "base_model": base_name,
        "base_kind": base.kind,
        "base_note": base.note,
        "untrained": base.untrained,
        "budget": asdict(budget),
        "steps": training.get("global_step"),
        "time_budget": plan or None,
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
    }


# --- stage 3: export --------------------------------------------------------------------------------------------------
def _export(model_dir: Path, out: Path, quantize: str, force: bool, ui: StageDisplay) -> Path:
    from gamjeong.export.exporter import ExportConfig, export_model
    from gamjeong.export.targets import detect_target

    # int8 is for CPUs: with onnxruntime-gpu installed, `--target auto` would mean CUDA, so name this CPU's target.
    target = detect_target(cuda_present=False).name
    config = ExportConfig(
        model=model_dir, output=out / EXPORT_DIRS[quantize], quantize=quantize, target=target, force=force
    )
    what = "quantising to int8 (the gate's search picks the fastest configuration that keeps the answers)"
    with ui.working(f"exporting to ONNX with Optimum and {what if quantize == 'int8' else 'checking fp32 parity'}"):
        return export_model(config, report=lambda message: ui.say(escape(message)))


def export_stage(model_dir: Path, out: Path, untrained: bool, ui: StageDisplay) -> dict[str, Any]:
    """int8 ONNX through the export module and its quality gate; fp32 when no int8 configuration passes.

    For an untrained model the gate means nothing (its probabilities are nearly uniform), so it is measured and
    recorded but not enforced (the manifest marks the export forced).
    """
    from gamjeong.artifacts import ONNX_MODEL_FILE, read_manifest

    fallback = None
    try:
        export_dir = _export(model_dir, out, "int8", untrained, ui)
    except QualityGateError as exc:
        fallback = str(exc)
        ui.warn(f"No int8 configuration kept the model's answers ({exc}) - quickstart exports fp32 instead.")
        export_dir = _export(model_dir, out, "none", False, ui)
    manifest = read_manifest(export_dir).as_json()
    parity = manifest.get("parity", {})
    size_mb = (export_dir / ONNX_MODEL_FILE).stat().st_size / 1e6
    ui.say(
        f"gate {'passed' if parity.get('passed') else 'not passed (untrained model: not enforced)'}; "
        f"model.onnx {size_mb:.1f} MB"
    )
    return {
        "dir": str(export_dir),
        "onnx_mb": round(size_mb, 2),
        "quantization": manifest.get("quantization"),
        "parity": parity,
        "gate_enforced": not untrained,
        "int8_fallback_reason": fallback,
    }


# --- stage 4: quality -------------------------------------------------------------------------------------------------
def quality_stage(export_dir: Path, heldout: dict[str, str], untrained: bool, ui: StageDisplay) -> dict[str, Any]:
    """The served (exported) model on each held-out test set: accuracy, macro-F1 and per-class F1."""
    from gamjeong.datafiles import read_labelled_file
    from gamjeong.predictor import load_predictor
    from gamjeong.training.evaluation import evaluate_predictor

    predictor = load_predictor(export_dir, device="cpu")
    results = {}
    with ui.working("evaluating the exported model on the held-out test sets"):
        for name, path in heldout.items():
            frame = read_labelled_file(Path(path))
            results[name] = evaluate_predictor(predictor, frame["text"].tolist(), frame["label"].tolist())
    title = f"quality of the served model ({predictor.backend}) on held-out test data, never trained on"
    for table in quality_tables(results, title + (f" - {UNTRAINED_MARK}" if untrained else "")):
        ui.console.print(table)
    quality = {
        name: {
            "texts": m["num_examples"],
            "accuracy": round(m["accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4),
            "per_class_f1": {label: round(row["f1"], 4) for label, row in m["per_class"].items()},
        }
        for name, m in results.items()
    }
    native, translated = quality.get(NATIVE_YARDSTICK), quality.get("GoEmotions-Korean")
    if native and translated:
        ui.say(
            f"native Korean (KOTE comments and the samples, held out): macro-F1 {native['macro_f1']:.3f} vs "
            f"GoEmotions-Korean (machine-translated Reddit): {translated['macro_f1']:.3f}"
        )
    if quality:
        write_served_quality(export_dir, quality, predictor.backend, untrained)
    return quality


def write_served_quality(export_dir: Path, quality: dict[str, Any], backend: str, untrained: bool) -> None:
    """The served model's own scores, as metrics.json of the exported directory: what the web page shows (the
    trained directory's metrics.json is PyTorch's, before int8). The headline is the first held-out set."""
    from gamjeong.artifacts import METRICS_FILE

    headline, figures = next(iter(quality.items()))
    document = {
        "accuracy": figures["accuracy"],
        "macro_f1": figures["macro_f1"],
        "backend": backend,
        "evaluated_on": f"{headline} held-out test, {figures['texts']:,} texts",
        "heldout": {name: {k: v for k, v in f.items() if k != "per_class_f1"} for name, f in quality.items()},
        "untrained": untrained,
    }
    (export_dir / METRICS_FILE).write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- stage 6: latency -------------------------------------------------------------------------------------------------
def bench_stage(model_dir: Path, export_dir: Path, budget: TrainingBudget, out: Path, ui: StageDisplay) -> dict:
    """PyTorch fp32 vs the exported ONNX model through the benchmark module (the same predictor as the server)."""
    from gamjeong.artifacts import read_manifest
    from gamjeong.benchmarks.model_bench import ModelBenchConfig, run_model_benchmark
    from gamjeong.benchmarks.report import write_model_results

    onnx_backend = "onnx-int8" if read_manifest(export_dir).precision == "int8" else "onnx-fp32"
    bench_config = ModelBenchConfig(
        model=model_dir,
        onnx=[export_dir],
        backends=["pytorch-fp32", onnx_backend],
        batch_sizes=[1, 8],
        seq_lengths=[min(32, budget.max_length)],
        iterations=10,
        warmup=2,
        min_iterations=3,
        max_cell_seconds=15.0,
        isolation="inprocess",  # one process: no second start-up of torch per backend
        agreement_texts=64,
        output=out / BENCH_DIR,
    )
    with ui.working("measuring PyTorch fp32 and ONNX Runtime") as status:
        results = run_model_benchmark(bench_config, progress=lambda message: status.update(f"[cyan]{escape(message)}"))
    write_model_results(results, out / BENCH_DIR)
    table = Table(title="latency per batch, tokenisation included (ms)", title_justify="left")
    for column in ("backend", "batch", "tokens", "p50", "p95", "texts/s"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    by_cell: dict[tuple[int, int], dict[str, float]] = {}
    for row in results["rows"]:
        table.add_row(
            row["backend"],
            str(row["batch_size"]),
            str(row["seq_len"]),
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['texts_per_s']:.0f}",
        )
        by_cell.setdefault((row["batch_size"], row["seq_len"]), {})[row["backend"].removesuffix("-cuda")] = row[
            "p50_ms"
        ]
    ui.console.print(table)
    for (batch, seq_len), cell in sorted(by_cell.items()):
        if "pytorch-fp32" in cell and onnx_backend in cell and cell[onnx_backend] > 0:
            speedup = cell["pytorch-fp32"] / cell[onnx_backend]
            if speedup >= 1.1:
                verdict = f"ONNX ({onnx_backend}) is {speedup:.1f}x faster than PyTorch fp32"
            elif speedup <= 0.9:
                verdict = f"PyTorch fp32 is {1 / speedup:.1f}x faster than ONNX ({onnx_backend})"
            else:
                verdict = f"ONNX ({onnx_backend}) and PyTorch fp32 are about as fast"
            ui.say(f"batch {batch}, {seq_len} tokens (p50): {verdict}")
    for backend in results["backends"]:
        if backend.get("status") != "ok":
            ui.say(f"[yellow]{backend['name']}: {backend.get('status')} ({backend.get('reason')})[/]")
    ui.say("(timings on a shared machine are noisy; `gamjeong bench model` runs the full grid)")
    return {"dir": str(out / BENCH_DIR), "rows": results["rows"]}
