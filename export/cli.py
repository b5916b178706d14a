"""`gamjeong export`: trained model directory -> quantised ONNX directory with a parity gate."""

from __future__ import annotations

from pathlib import Path

import typer


def _config_from_options(**options: object):
    """The typed ExportConfig; a bad option value becomes one sentence naming the flag."""
    from pydantic import ValidationError

    from gamjeong.errors import flag_error
    from gamjeong.export.exporter import ExportConfig

    try:
        return ExportConfig(**options)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise flag_error(exc, options) from None


def export_command(
    model: Path = typer.Option(..., "--model", "-m", help="Trained model directory (from `gamjeong train`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to create for the exported model."),
    quantize: str = typer.Option(
        None, "--quantize", help="int8, fp16 or none (fp32). Default: int8 for CPU targets, fp16 for cuda."
    ),
    optimize: str = typer.Option(
        None,
        "--optimize",
        help="Optimum graph optimisation: none, O1, O2, O3, O4 (fp16 for CUDA). Default: O4 for fp16 on cuda, else none.",
    ),
    target: str = typer.Option("auto", "--target", help="auto, avx512_vnni, avx2, arm64 or cuda."),
    calibration_data: Path = typer.Option(
        None, "--calibration-data", help="Texts (CSV/TSV/JSONL/XLSX with a text column) for static int8."
    ),
    calibration_samples: int = typer.Option(128, "--calibration-samples", help="At most this many calibration texts."),
    per_channel: bool = typer.Option(
        True, "--per-channel/--per-tensor", help="int8 weight scales per channel (default) or per tensor."
    ),
    parity_data: Path = typer.Option(
        None, "--parity-data", help="Texts (and labels) for the parity gate; default: the model's validation split."
    ),
    parity_threshold: float = typer.Option(
        None,
        "--parity-threshold",
        help="Minimum raw argmax agreement (default 0.995 for fp32/fp16; none for int8, judged on quality instead).",
    ),
    max_quality_drop: float = typer.Option(
        1.0, "--max-quality-drop", help="int8: largest accuracy or macro-F1 drop below PyTorch, in points."
    ),
    confident_margin: float = typer.Option(
        0.2, "--confident-margin", help="int8: PyTorch's top-two margin that makes a text confident."
    ),
    min_confident_agreement: float = typer.Option(
        0.99, "--min-confident-agreement", help="int8: argmax agreement required on the confident texts."
    ),
    drop_confidence: float = typer.Option(
        0.95,
        "--drop-confidence",
        help="int8: a quality drop beyond --max-quality-drop fails only when the export scores below PyTorch in at "
        "least this share of paired bootstrap resamples of the texts (0: the point estimate alone).",
    ),
    search: bool = typer.Option(
        True,
        "--search/--no-search",
        help="int8: try per-channel, then keep the most sensitive layers in fp32 until the gate passes. "
        "--no-search exports exactly the preset asked for.",
    ),
    max_candidates: int = typer.Option(5, "--max-candidates", help="int8 search: at most this many candidates."),
    sensitivity_texts: int = typer.Option(
        500, "--sensitivity-texts", help="int8 search: texts each per-layer sensitivity run is measured on."
    ),
    max_parity_texts: int = typer.Option(1000, "--max-parity-texts", help="At most this many parity texts."),
    force: bool = typer.Option(
        False, "--force", help="Publish even if the parity gate fails (marked in the manifest)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (default: Optimum's choice)."),
) -> None:
    """Export a trained model to ONNX with Optimum (optimise, quantise) and check parity with PyTorch."""
    from gamjeong.export.exporter import export_model

    config = _config_from_options(
        model=model,
        output=output,
        quantize=quantize,
        optimize=optimize,
        target=target,
        calibration_data=calibration_data,
        calibration_samples=calibration_samples,
        per_channel=per_channel,
        parity_data=parity_data,
        parity_threshold=parity_threshold,
        max_quality_drop=max_quality_drop,
        confident_margin=confident_margin,
        min_confident_agreement=min_confident_agreement,
        drop_confidence=drop_confidence,
        search=search,
        max_candidates=max_candidates,
        sensitivity_texts=sensitivity_texts,
        max_parity_texts=max_parity_texts,
        force=force,
        overwrite=overwrite,
        opset=opset,
    )
    published = export_model(config, report=lambda line: typer.echo(line, err=True))
    typer.echo(str(published))


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
