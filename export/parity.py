"""The parity gate: the PyTorch model and its ONNX export, run through the same predictor interface on the same texts.

Texts come from `--parity-data`, else the validation split recorded in the trained directory, else a small built-in
sample set of Korean sentences (gamjeong.samples). The report goes to parity.json and the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamjeong.artifacts import SPLITS_DIR, VALIDATION_SPLIT
from gamjeong.errors import GamjeongError
from gamjeong.predictor import Predictor
from gamjeong.samples import load_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityTexts:
    texts: list[str]
    labels: list[int] | None  # class ids, when the source has labels
    source: str


def read_texts_file(path: Path) -> tuple[list[str], list[int] | None]:
    """Texts and labels of a data file (any format `gamjeong train` reads); texts only when it has no label column."""
    from gamjeong.datafiles import TEXT_COLUMN_NAMES, read_labelled_file

    try:
        frame = read_labelled_file(path)
        return frame["text"].tolist(), [int(label) for label in frame["label"]]
    except GamjeongError as labelled_error:
        # calibration texts need no labels, and parity without labels still measures agreement
        if "has no label column" not in str(labelled_error):
            raise
        unlabelled_error = labelled_error
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".xlsx":
            frame = pd.read_excel(path)
        elif suffix == ".jsonl":
            frame = pd.read_json(path, lines=True)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError) as exc:
        raise GamjeongError(f"Cannot read '{path}' as a UTF-8 table with a text column: {exc}") from exc
    columns = {str(c).strip().lower(): c for c in frame.columns}
    text_column = next((columns[c] for c in TEXT_COLUMN_NAMES if c in columns), None)
    if text_column is None:
        raise unlabelled_error
    texts = [str(t).strip() for t in frame[text_column].dropna()]
    texts = [t for t in texts if t]
    if not texts:
        raise GamjeongError(f"'{path}' holds no texts.")
    return texts, None


def load_parity_texts(parity_data: Path | None, model_dir: Path, *, max_texts: int, seed: int = 0) -> ParityTexts:
    """The texts the gate runs on, at most `max_texts` of them (a seeded sample of a larger file)."""
    validation = model_dir / SPLITS_DIR / VALIDATION_SPLIT
    if parity_data is not None:
        texts, labels = read_texts_file(Path(parity_data))
        source = str(Path(parity_data).resolve())
    elif validation.is_file():
        texts, labels = read_texts_file(validation)
        source = str(validation)
    else:
        samples = load_samples()
        texts, labels = samples["text"].tolist(), [int(label) for label in samples["label"]]
        source = "built-in Korean sample set (gamjeong.samples)"
    if len(texts) > max_texts:
        chosen = sorted(np.random.default_rng(seed).choice(len(texts), size=max_texts, replace=False).tolist())
        texts = [texts[i] for i in chosen]
        labels = [labels[i] for i in chosen] if labels is not None else None
        source += f" (seeded sample of {max_texts})"
    return ParityTexts(texts, labels, source)


def compare_predictors(
    reference: Predictor, candidate: Predictor, texts: ParityTexts, *, batch_size: int = 32
) -> dict[str, object]:
    """Probability differences and agreements of two predictors, plus the quality of each when labels exist."""
    from gamjeong.export.gate import parity_figures

    reference_probs = reference.predict_proba(texts.texts, batch_size=batch_size)
    candidate_probs = candidate.predict_proba(texts.texts, batch_size=batch_size)
    return {
        "source": texts.source,
        "reference_backend": reference.backend,
        "candidate_backend": candidate.backend,
        **parity_figures(reference_probs, candidate_probs, texts.labels),
    }
