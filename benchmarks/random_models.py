"""The models `gamjeong bench model` measures when it is given none: a random-weight DistilBERT (tiny, or the real
size of distilbert-base-multilingual-cased, built once into the cache) and its ONNX exports. Random weights give real
sizes and timings, not real predictions; every result says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gamjeong.artifacts import MANIFEST_FILE, ONNX_MODEL_FILE
from gamjeong.errors import GamjeongError

from .texts import MBERT_TOKENIZER_DIR


def build_random_model_dir(dest: Path, texts: list[str], *, real_size: bool, tokenizer_dir: Path | None) -> str:
    """Save a random-weight DistilBERT in the trained-dir contract; returns how its tokenizer was obtained."""
    from gamjeong.modeling import load_tokenizer, save_random_model, train_wordpiece_tokenizer

    tokenizer_dir = tokenizer_dir or (MBERT_TOKENIZER_DIR if real_size else None)
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        save_random_model(dest, load_tokenizer(tokenizer_dir), real_size=real_size, seed=0)
        return f"tokenizer from {tokenizer_dir}"
    if tokenizer_dir is not None and tokenizer_dir != MBERT_TOKENIZER_DIR:
        raise GamjeongError(f"Tokenizer directory '{tokenizer_dir}' does not exist.")
    # A WordPiece vocabulary cannot reach 119,547 words from a few thousand sentences: the tokenizer is trained
    # on the texts, and the embedding matrix keeps the real vocabulary size so that size and speed stay real.
    # the tiny architecture has 128 positions: a longer tokenizer limit would let a server's warm-up overrun them
    tokenizer = train_wordpiece_tokenizer(
        texts, vocab_size=8000 if real_size else 2000, model_max_length=512 if real_size else 128
    )
    save_random_model(dest, tokenizer, real_size=real_size, seed=0, vocab_size=119_547 if real_size else None)
    return "tokenizer trained on the benchmark texts" + (
        f" ({MBERT_TOKENIZER_DIR} was missing; the embeddings keep the real 119,547-word size)" if real_size else ""
    )


def export_for_benchmark(
    model_dir: Path,
    dest: Path,
    precision: str,
    *,
    random_weights: bool,
    progress: Callable[[str], None],
    target: str = "auto",
    optimize: str = "none",
) -> Path:
    """`gamjeong export` of the trained dir to fp32 ("none"), int8 or fp16 ONNX, for `target` at graph optimisation
    level `optimize`; an existing complete export is reused (`dest` names the settings).

    With random weights the parity gate is forced open (the predictions mean nothing, only the timing does); the
    parity figures are still recorded in the export's manifest, and the benchmark measures agreement itself.
    """
    from gamjeong.export.exporter import ExportConfig, export_model

    if random_weights and (dest / ONNX_MODEL_FILE).is_file() and (dest / MANIFEST_FILE).is_file():
        progress(f"reusing the {precision} export in {dest}")
        return dest
    progress(f"exporting {model_dir} to {precision} ONNX (target {target}, optimisation {optimize}) in {dest}")
    config = ExportConfig(
        model=model_dir,
        output=dest,
        quantize="none" if precision == "fp32" else precision,  # type: ignore[arg-type]
        target=target,  # type: ignore[arg-type]
        optimize=optimize,  # type: ignore[arg-type]
        force=random_weights,
        overwrite=True,
    )
    return export_model(config, report=progress)


def export_summary(model_dir: Path) -> dict[str, Any] | None:
    """What the export's manifest says about it (None for a directory without one)."""
    from gamjeong.artifacts import find_manifest

    manifest = find_manifest(model_dir)
    if manifest is None:
        return None
    return {
        "quantization": manifest["quantization"],
        "optimization": manifest.optimization,
        "target": manifest.target.name,
        "export_parity_argmax_agreement": manifest.parity.argmax_agreement,
        "forced": manifest.forced,
    }


RANDOM_MODEL_NAME = "random-distilbert-base-multilingual-cased"


def random_real_size_model(
    cache_dir: Path, texts: list[str], tokenizer_dir: Path | None, progress: Callable[[str], None]
) -> tuple[Path, str]:
    """The real-size random-weight trained dir in the cache (built once); returns it and how its tokenizer was had."""
    model_dir = cache_dir / RANDOM_MODEL_NAME / "model"
    how_file = model_dir / "HOW.txt"
    if not (model_dir / "model.safetensors").is_file() or not how_file.is_file():
        progress(f"building the real-size random-weight model in {model_dir}")
        how = build_random_model_dir(model_dir, texts, real_size=True, tokenizer_dir=tokenizer_dir)
        how_file.write_text(how + "\n", encoding="utf-8")
    return model_dir, how_file.read_text(encoding="utf-8").strip()


def random_real_size_export(
    cache_dir: Path, texts: list[str], tokenizer_dir: Path | None, precision: str, progress: Callable[[str], None]
) -> Path:
    """That model exported to `precision` ONNX in the cache (exported once)."""
    model_dir, _ = random_real_size_model(cache_dir, texts, tokenizer_dir, progress)
    dest = cache_dir / RANDOM_MODEL_NAME / f"onnx-{precision}"
    return export_for_benchmark(model_dir, dest, precision, random_weights=True, progress=progress)
