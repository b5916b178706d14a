"""Reading labelled Korean text files, cleaning them and splitting them for training.

Every reader returns a DataFrame with two columns: `text` (str) and `label` (int class id, see gamjeong.labels).
Bad input never becomes a traceback: it raises GamjeongError with one sentence saying what to fix.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
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
# Split files of a data directory, by file stem.
SPLIT_FILE_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}

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

# GoEmotions-Korean, pinned to the commit the shared development data was made from (see shared/data SOURCE.md).
GOEMOTIONS_KOREAN_URL = (
    "https://raw.githubusercontent.com/monologg/GoEmotions-Korean/e708cb1af26140ed1f3724d53d88717b77c26e0e/data"
)
GOEMOTIONS_KOREAN_FILES = ("train.tsv", "dev.tsv", "test.tsv")


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


def write_split_csv(frame: pd.DataFrame, path: Path) -> None:
    """A split as UTF-8 CSV with columns text,label and English label names (readable by read_labelled_file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = pd.DataFrame({"text": frame["text"], "label": frame["label"].map(ID2LABEL)})
    out.to_csv(path, index=False, encoding="utf-8")


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
