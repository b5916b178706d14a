"""Cleaning labelled data and splitting it for training; downloading GoEmotions-Korean.

Reading the files (formats, encodings, columns, labels) is gamjeong.datafiles, shared with every other stage; its
names are re-exported here for older callers. Bad input never becomes a traceback: it raises GamjeongError with one
sentence saying what to fix.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gamjeong.datafiles import (
    GOEMOTIONS_EKMAN,
    GOEMOTIONS_ID_TO_CLASS,
    GOEMOTIONS_LABELS,
    LABEL_COLUMN_NAMES,
    SUPPORTED_EXTENSIONS,
    TEXT_COLUMN_NAMES,
    FileReport,
    label_counts,
    read_labelled_file,
    read_labelled_file_with_report,
    write_split_csv,
)
from gamjeong.errors import GamjeongError

__all__ = [  # the reading names are gamjeong.datafiles', re-exported
    "GOEMOTIONS_EKMAN",
    "GOEMOTIONS_ID_TO_CLASS",
    "GOEMOTIONS_KOREAN_FILES",
    "GOEMOTIONS_KOREAN_URL",
    "GOEMOTIONS_LABELS",
    "LABEL_COLUMN_NAMES",
    "SPLIT_FILE_STEMS",
    "SUPPORTED_EXTENSIONS",
    "TEXT_COLUMN_NAMES",
    "DatasetSplits",
    "FileReport",
    "clean_labelled_rows",
    "download_goemotions_korean",
    "find_split_files",
    "label_counts",
    "load_labelled_data",
    "load_splits",
    "read_labelled_file",
    "read_labelled_file_with_report",
    "stratified_split",
    "write_split_csv",
]

log = logging.getLogger(__name__)

# Split files of a data directory, by file stem.
SPLIT_FILE_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}

# GoEmotions-Korean, pinned to the commit the shared development data was made from (see shared/data SOURCE.md).
GOEMOTIONS_KOREAN_URL = (
    "https://raw.githubusercontent.com/monologg/GoEmotions-Korean/e708cb1af26140ed1f3724d53d88717b77c26e0e/data"
)
GOEMOTIONS_KOREAN_FILES = ("train.tsv", "dev.tsv", "test.tsv")


@dataclass
class DatasetSplits:
    """The train/validation(/test) data a training run uses, with a report of how it was made."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None
    files: dict[str, FileReport] = field(default_factory=dict)  # by split name
    split_note: str = ""  # how the splits were made (given, or cut from which file)
    overlap: dict[str, int] = field(default_factory=dict)  # e.g. {"test texts also in train": 3}

    def named(self) -> dict[str, pd.DataFrame]:
        splits = {"train": self.train, "validation": self.validation}
        if self.test is not None:
            splits["test"] = self.test
        return splits

    def class_counts(self) -> dict[str, dict[str, int]]:
        return {name: label_counts(df) for name, df in self.named().items()}

    def report_dict(self) -> dict:
        return {
            "files": {name: {**asdict(r), "dropped_total": r.dropped_total} for name, r in self.files.items()},
            "split": self.split_note,
            "overlap": self.overlap,
            "class_counts": self.class_counts(),
        }


# --- cleaning and splitting --------------------------------------------------------------------------------------
def clean_labelled_rows(frame: pd.DataFrame, report: FileReport | None = None) -> pd.DataFrame:
    """Drop every row of a text that carries more than one label, then exact duplicates (keeping the first).

    Counts go into `report` when one is given.
    """
    labels_per_text = frame.groupby("text", sort=False)["label"].transform("nunique")
    conflicting = labels_per_text > 1
    kept = frame[~conflicting]
    duplicates = kept.duplicated(subset=["text", "label"], keep="first")
    cleaned = kept[~duplicates].reset_index(drop=True)
    if report is not None:
        report.dropped_conflicting = int(conflicting.sum())
        report.conflicting_texts = int(frame.loc[conflicting, "text"].nunique())
        report.dropped_duplicates = int(duplicates.sum())
        report.rows_kept = len(cleaned)
    return cleaned


def load_labelled_data(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
) -> tuple[pd.DataFrame, FileReport]:
    """Read and clean one file: what training and evaluation use, so both see the same rows."""
    frame, report = read_labelled_file_with_report(
        path, text_column=text_column, label_column=label_column, encoding=encoding
    )
    cleaned = clean_labelled_rows(frame, report)
    if cleaned.empty:
        raise GamjeongError(f"No rows of '{path}' are left after removing duplicates and conflicting labels.")
    return cleaned, report


def stratified_split(
    frame: pd.DataFrame, fractions: tuple[float, ...], seed: int
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Cut the given fractions out of `frame`, class by class with a seeded shuffle.

    Each class keeps at least one row in the remainder, so rare classes are never cut away from training.
    Returns (remainder, [one frame per fraction]); row order follows the input order.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    rest: list[int] = []
    for _, positions in sorted(frame.groupby("label").indices.items()):
        shuffled = rng.permutation(positions)
        start = 0
        for part, fraction in zip(parts, fractions, strict=True):
            take = min(round(len(shuffled) * fraction), max(0, len(shuffled) - 1 - start))
            part.extend(shuffled[start : start + take])
            start += take
        rest.extend(shuffled[start:])
    pick = lambda positions: frame.iloc[sorted(positions)].reset_index(drop=True)  # noqa: E731
    return pick(rest), [pick(p) for p in parts]


def find_split_files(directory: Path) -> dict[str, Path]:
    """The train / validation (dev) / test files of a data directory, by stem and supported extension."""
    found: dict[str, Path] = {}
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            match = next((p for p in files if p.stem.lower() == stem), None)
            if match is not None:
                found[split] = match
                break
    if "train" not in found:
        names = ", ".join(p.name for p in files) or "no data files"
        raise GamjeongError(
            f"Data directory '{directory}' has no train file (it holds {names}); "
            f"name the files train, dev or validation, and test with one of {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    return found


def load_splits(
    data: str | Path,
    *,
    eval_data: str | Path | None = None,
    test_data: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
) -> DatasetSplits:
    """Train, validation and test data from a file or a directory of split files, cleaned and reported.

    A split that is not given is cut from the training data with a stratified, seeded split: validation when there
    is no validation file, and test too when neither validation nor test is given.
    """
    data = Path(data).expanduser()
    paths: dict[str, Path] = find_split_files(data) if data.is_dir() else {"train": data}
    if eval_data is not None:
        paths["validation"] = Path(eval_data).expanduser()
    if test_data is not None:
        paths["test"] = Path(test_data).expanduser()

    frames: dict[str, pd.DataFrame] = {}
    reports: dict[str, FileReport] = {}
    for split, path in paths.items():
        frames[split], reports[split] = load_labelled_data(
            path, text_column=text_column, label_column=label_column, encoding=encoding
        )

    train = frames["train"]
    notes = [f"{split} from {paths[split].name}" for split in paths]
    cut: list[tuple[str, float]] = []
    if "validation" not in frames:
        cut.append(("validation", validation_fraction))
        if "test" not in frames:
            cut.append(("test", test_fraction))
    if cut:
        train, parts = stratified_split(train, tuple(f for _, f in cut), seed)
        for (split, fraction), part in zip(cut, parts, strict=True):
            frames[split] = part
            notes.append(f"{split} = {fraction:.0%} of {paths['train'].name} (stratified, seed {seed})")
        if frames["validation"].empty:
            raise GamjeongError(
                f"'{paths['train']}' is too small to cut a validation split from; give one with --eval-data."
            )
    if train.empty:
        raise GamjeongError(f"No training rows are left in '{paths['train']}'.")

    train_texts = set(train["text"])
    overlap = {
        f"{split} texts also in train": int(frames[split]["text"].isin(train_texts).sum())
        for split in ("validation", "test")
        if split in frames
    }
    for what, count in overlap.items():
        if count:
            log.info("%d %s (kept)", count, what)
    return DatasetSplits(
        train=train,
        validation=frames["validation"],
        test=frames.get("test"),
        files=reports,
        split_note="; ".join(notes),
        overlap=overlap,
    )


# --- download ----------------------------------------------------------------------------------------------------
def download_goemotions_korean(cache_dir: str | Path, *, base_url: str = GOEMOTIONS_KOREAN_URL) -> Path:
    """Download monologg/GoEmotions-Korean (train/dev/test TSV) into `cache_dir`, once; returns the folder.

    The folder works directly as `--data` (GoEmotions TSVs are recognised and mapped to the seven classes).
    """
    target = Path(cache_dir).expanduser() / "goemotions-korean"
    target.mkdir(parents=True, exist_ok=True)
    for name in GOEMOTIONS_KOREAN_FILES:
        destination = target / name
        if destination.is_file() and destination.stat().st_size > 0:
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        partial = destination.with_suffix(".tsv.part")
        try:
            with urllib.request.urlopen(url, timeout=30) as response, partial.open("wb") as out:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc
            raise GamjeongError(
                f"Could not download GoEmotions-Korean from {url} ({reason}); without network, download "
                "data/train.tsv, dev.tsv and test.tsv of github.com/monologg/GoEmotions-Korean yourself and pass "
                "their folder with --data."
            ) from None
        partial.replace(destination)
    return target
