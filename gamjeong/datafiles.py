"""Labelled Korean text files, read the same way by every stage: training, evaluation, export's parity and calibration
texts, the benchmarks and quickstart.

Every reader returns a DataFrame with two columns: `text` (str) and `label` (int class id, see gamjeong.labels).
CSV, TSV, JSON Lines and XLSX; UTF-8 (with or without BOM) and CP949/EUC-KR; the AI Hub xlsx and GoEmotions' TSV as
they come. Bad input never becomes a traceback: it raises GamjeongError with one sentence saying what to fix.
Cleaning, splitting and downloading for training stay in gamjeong.training.data.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gamjeong.errors import GamjeongError
from gamjeong.labels import ID2LABEL, LABEL2ID, to_label_ids

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".xlsx")
# Compared case-insensitively, in order of preference.
TEXT_COLUMN_NAMES = ("text", "sentence", "document")
LABEL_COLUMN_NAMES = ("label", "emotion")

# GoEmotions (Demszky et al., 2020): the 28 label names in id order (data/label.txt of monologg/GoEmotions-Korean)
# and Google's official Ekman grouping (goemotions/data/ekman_mapping.json), with neutral kept as its own class.
GOEMOTIONS_LABELS: tuple[str, ...] = tuple(
    [
        "admiration",
        "amusement",
        "anger",
        "annoyance",
        "approval",
        "caring",
        "confusion",
        "curiosity",
        "desire",
        "disappointment",
        "disapproval",
        "disgust",
        "embarrassment",
        "excitement",
        "fear",
        "gratitude",
        "grief",
        "joy",
        "love",
        "nervousness",
        "optimism",
        "pride",
        "realization",
        "relief",
        "remorse",
        "sadness",
        "surprise",
        "neutral",
    ]
)
GOEMOTIONS_EKMAN: dict[str, str] = {
    "anger": "anger annoyance disapproval",
    "disgust": "disgust",
    "fear": "fear nervousness",
    "joy": "joy amusement approval excitement gratitude love optimism relief pride admiration desire caring",
    "sadness": "sadness disappointment embarrassment grief remorse",
    "surprise": "surprise realization confusion curiosity",
    "neutral": "neutral",
}
GOEMOTIONS_ID_TO_CLASS: dict[int, int] = {
    GOEMOTIONS_LABELS.index(source): LABEL2ID[ekman]
    for ekman, sources in GOEMOTIONS_EKMAN.items()
    for source in sources.split()
}
_GOEMOTIONS_IDS = re.compile(r"\d+(,\d+)*")


@dataclass
class FileReport:
    """What reading and cleaning one file did: its layout, and every row dropped and why."""

    path: str
    layout: str  # "table" (named columns), "goemotions-tsv" (text<TAB>ids, no header)
    encoding: str | None  # None for .xlsx
    text_column: str
    label_column: str
    rows_read: int
    dropped_empty: int = 0  # blank or whitespace-only text
    dropped_multi_class: int = 0  # GoEmotions rows whose labels map to more than one class
    dropped_duplicates: int = 0  # exact (text, label) repeats, first one kept
    dropped_conflicting: int = 0  # rows of texts that appear with more than one label (all dropped)
    conflicting_texts: int = 0
    rows_kept: int = 0

    @property
    def dropped_total(self) -> int:
        return self.dropped_empty + self.dropped_multi_class + self.dropped_duplicates + self.dropped_conflicting

    def summary(self) -> str:
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.dropped_empty, "empty"),
                (self.dropped_multi_class, "multi-class"),
                (self.dropped_duplicates, "duplicate"),
                (self.dropped_conflicting, f"conflicting-label ({self.conflicting_texts} texts)"),
            )
            if n
        ]
        dropped = ", ".join(parts) if parts else "nothing"
        return f"{self.path}: read {self.rows_read} rows, kept {self.rows_kept}, dropped {dropped}"


def label_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per class, every class listed (zero included), in id order."""
    counts = df["label"].value_counts()
    return {name: int(counts.get(i, 0)) for i, name in ID2LABEL.items()}


# --- decoding ----------------------------------------------------------------------------------------------------
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


def _decode(raw: bytes, path: Path, encoding: str | None) -> tuple[str, str]:
    """The file's text and the encoding used: the one asked for, else UTF-8 (with or without BOM), else CP949."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise GamjeongError(
                f"Unknown encoding '{encoding}'; use for example utf-8, utf-8-sig, cp949 or euc-kr."
            ) from None
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise GamjeongError(
                f"'{path}' is not valid {encoding} text (bad byte at offset {exc.start}); "
                "pass the file's real encoding with --encoding (Korean Excel exports are usually cp949)."
            ) from None
        return text.removeprefix("\ufeff"), encoding
    if raw.startswith(codecs.BOM_UTF8):
        candidates = ["utf-8-sig"]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ["utf-16"]
    else:
        # cp949 is a superset of euc-kr, so it reads both; it is only trusted when the result holds Hangul,
        # because almost any byte string decodes as cp949.
        candidates = ["utf-8", "cp949"]
    for candidate in candidates:
        try:
            text = raw.decode(candidate)
        except UnicodeDecodeError:
            continue
        if candidate != "cp949" or _HANGUL.search(text):
            return text, candidate
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is not None and best.encoding:
        log.warning("Guessed encoding %s for %s; pass --encoding to choose it.", best.encoding, path)
        return str(best), best.encoding
    raise GamjeongError(
        f"Could not work out the text encoding of '{path}'; pass it with --encoding (for example utf-8 or cp949)."
    )


# --- reading -----------------------------------------------------------------------------------------------------
def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    found = ", ".join(repr(c) for c in columns)
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise GamjeongError(f"'{path}' has no column '{wanted}' (--{what}-column); its columns are {found}.")
    by_lower = {}
    for column in columns:
        by_lower.setdefault(str(column).strip().lower(), column)
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise GamjeongError(
        f"'{path}' has no {what} column (looked for {', '.join(candidates)}); its columns are {found}, "
        f"so name the right one with --{what}-column."
    )


def _is_goemotions_tsv(first_line: str) -> bool:
    """GoEmotions' headerless `text<TAB>ids[<TAB>comment id]` layout, recognised by its first row."""
    parts = first_line.rstrip("\r\n").split("\t")
    if len(parts) not in (2, 3) or not _GOEMOTIONS_IDS.fullmatch(parts[1].strip()):
        return False
    return all(int(i) < len(GOEMOTIONS_LABELS) for i in parts[1].split(","))


def _read_table(path: Path, encoding: str | None) -> tuple[pd.DataFrame, str | None, str]:
    """Raw rows as strings (no NaN), the encoding used and the layout name."""
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        try:
            frame = pd.read_excel(path, sheet_name=0, dtype=object, engine="openpyxl")
        except Exception as exc:  # openpyxl raises many types (BadZipFile, KeyError, InvalidFileException...)
            raise GamjeongError(
                f"'{path}' could not be read as an Excel .xlsx workbook ({exc.__class__.__name__}); "
                "save it again as .xlsx or export it to CSV."
            ) from None
        frame.columns = [str(c) for c in frame.columns]
        return frame.astype(object).where(frame.notna(), ""), None, "table"

    raw = path.read_bytes()
    if not raw.strip():
        raise GamjeongError(f"'{path}' is empty; give a file with a header row and labelled texts.")
    text, used = _decode(raw, path, encoding)
    if "\x00" in text:
        raise GamjeongError(f"'{path}' looks like a binary file, not {suffix[1:].upper()} text.")
    try:
        if suffix in (".jsonl", ".json"):
            return _read_json(text, path), used, "table"
        if suffix == ".tsv" and _is_goemotions_tsv(text.split("\n", 1)[0]):
            frame = pd.read_csv(
                io.StringIO(text),
                sep="\t",
                header=None,
                dtype=str,
                keep_default_na=False,
                quoting=csv.QUOTE_NONE,
                usecols=[0, 1],
                names=["text", "ids"],
            )
            return frame, used, "goemotions-tsv"
        frame = pd.read_csv(
            io.StringIO(text),
            sep="\t" if suffix == ".tsv" else ",",
            dtype=str,
            keep_default_na=False,
            # Tab-separated files are conventionally unquoted; a stray quote must not swallow the next lines.
            quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise GamjeongError(f"'{path}' is not a readable {suffix[1:].upper()} file: {first_line}.") from None
    return frame, used, "table"


def _read_json(text: str, path: Path) -> pd.DataFrame:
    """JSON Lines (one object per line) or, for .json, one array of objects."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise GamjeongError(f"'{path}' is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise GamjeongError(f"Line {number} of '{path}' is not valid JSON ({exc.msg}).") from None
    if not all(isinstance(r, dict) for r in records):
        raise GamjeongError(f'\'{path}\' must hold one JSON object per line, like {{"text": ..., "label": ...}}.')
    frame = pd.DataFrame.from_records(records)
    return frame.astype(object).where(frame.notna(), "")


def _goemotions_to_classes(ids: pd.Series, path: Path) -> tuple[pd.Series, pd.Series]:
    """Class id per row (-1 where the row's GoEmotions labels map to more than one class) and a keep-mask."""
    classes: list[int] = []
    for row, value in enumerate(ids, start=1):
        try:
            source_ids = {int(i) for i in str(value).split(",")}
            mapped = {GOEMOTIONS_ID_TO_CLASS[i] for i in source_ids}
        except (ValueError, KeyError):
            raise GamjeongError(
                f"Row {row} of '{path}' has label ids '{value}'; GoEmotions ids are 0-{len(GOEMOTIONS_LABELS) - 1}, "
                "comma-separated."
            ) from None
        classes.append(mapped.pop() if len(mapped) == 1 else -1)
    series = pd.Series(classes, index=ids.index, dtype="int64")
    return series, series >= 0


def read_labelled_file_with_report(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
) -> tuple[pd.DataFrame, FileReport]:
    """Read one labelled file into (text, label id) rows: stripped, empty texts and multi-class rows dropped.

    Duplicates and conflicting labels are left in; `clean_labelled_rows` removes them.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise GamjeongError(f"'{path}' is a directory; give one data file (or use it as --data for training).")
    if not path.is_file():
        raise GamjeongError(f"Data file '{path}' does not exist.")
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise GamjeongError(
            f"'{path}' has an unsupported extension '{path.suffix}'; use one of {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    try:
        frame, used_encoding, layout = _read_table(path, encoding)
    except OSError as exc:
        raise GamjeongError(f"Could not read '{path}': {exc.strerror or exc}.") from None

    if layout == "goemotions-tsv":
        text_col, label_col = "text", "ids"
    else:
        columns = [str(c) for c in frame.columns]
        text_col = _pick_column(columns, text_column, TEXT_COLUMN_NAMES, "text", path)
        label_col = _pick_column(columns, label_column, LABEL_COLUMN_NAMES, "label", path)
    if frame.empty:
        raise GamjeongError(f"'{path}' has a header but no data rows.")

    report = FileReport(
        path=str(path),
        layout=layout,
        encoding=used_encoding,
        text_column=text_col,
        label_column=label_col,
        rows_read=len(frame),
    )
    texts = frame[text_col].astype(str).str.strip()
    non_empty = texts != ""
    report.dropped_empty = int((~non_empty).sum())
    frame, texts = frame[non_empty], texts[non_empty]
    if frame.empty:
        raise GamjeongError(f"'{path}' has no rows with text in column '{text_col}'.")

    if layout == "goemotions-tsv":
        labels, single_class = _goemotions_to_classes(frame[label_col], path)
        report.dropped_multi_class = int((~single_class).sum())
        texts, labels = texts[single_class], labels[single_class]
        if report.dropped_multi_class:
            log.info("%s: dropped %d rows that map to more than one class", path, report.dropped_multi_class)
        label_ids = labels.tolist()
    else:
        raw_labels = frame[label_col]
        missing = raw_labels.astype(str).str.strip() == ""
        if missing.any():
            first = int(np.flatnonzero(missing.to_numpy())[0])
            raise GamjeongError(
                f"{int(missing.sum())} row(s) of '{path}' have text but no label in column '{label_col}' "
                f"(the first is data row {first + 1}); label them or remove them."
            )
        try:
            label_ids = to_label_ids(raw_labels.tolist())
        except GamjeongError as exc:
            raise GamjeongError(f"Column '{label_col}' of '{path}': {exc}") from None

    result = pd.DataFrame({"text": texts.tolist(), "label": pd.Series(label_ids, dtype="int64")})
    report.rows_kept = len(result)
    return result, report


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
) -> pd.DataFrame:
    """A labelled file as a DataFrame with `text` (str) and `label` (int class id).

    CSV, TSV, JSON Lines and XLSX; UTF-8 (with or without BOM) and CP949/EUC-KR detected or chosen with `encoding`;
    text and label columns found by their usual names (text/sentence/document, label/emotion, any case) or given.
    The AI Hub xlsx (Sentence, Emotion with 행복) and GoEmotions TSV (text<TAB>ids, no header) work as they are.
    """
    frame, _ = read_labelled_file_with_report(
        path, text_column=text_column, label_column=label_column, encoding=encoding
    )
    return frame


def write_split_csv(frame: pd.DataFrame, path: Path) -> None:
    """A split as UTF-8 CSV with columns text,label and English label names (readable by read_labelled_file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = pd.DataFrame({"text": frame["text"], "label": frame["label"].map(ID2LABEL)})
    out.to_csv(path, index=False, encoding="utf-8")
