"""`gamjeong data inspect`: what a data file holds before anything is trained on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gamjeong.datafiles import FileReport
from gamjeong.errors import GamjeongError
from gamjeong.labels import EMOTIONS
from gamjeong.modeling import DEFAULT_BASE_MODEL

log = logging.getLogger(__name__)


class InspectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    text_column: str | None = None
    label_column: str | None = None
    encoding: str | None = None
    tokenizer: str | None = None  # hub id or directory; None: the default base model's, if it is available locally
    max_length: int = Field(128, ge=1)


@dataclass
class LengthStats:
    min: int
    mean: float
    median: float
    p95: float
    max: int
    over_max_length: int  # texts longer than max_length (only meaningful for tokens)

    @classmethod
    def of(cls, lengths: list[int], max_length: int) -> LengthStats:
        values = np.asarray(lengths)
        return cls(
            min=int(values.min()),
            mean=float(values.mean()),
            median=float(np.median(values)),
            p95=float(np.percentile(values, 95)),
            max=int(values.max()),
            over_max_length=int((values > max_length).sum()),
        )


@dataclass
class FileInspection:
    report: FileReport  # counts of what cleaning would drop
    rows_per_class: dict[str, int]  # after cleaning, by English name
    chars: LengthStats
    tokens: LengthStats
    token_unit: str  # the tokenizer used, or "whitespace words"
    note: str | None  # why token counts are whitespace words


def _load_counting_tokenizer(name: str | None) -> tuple[object | None, str, str | None]:
    """The tokenizer to count tokens with, its description and a note when falling back to whitespace words."""
    from gamjeong.modeling import load_tokenizer

    if name is not None:
        return load_tokenizer(name), name, None
    # Trying the Hub offline costs about a minute of retries, so the default is used only when it is cached.
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(DEFAULT_BASE_MODEL, "tokenizer_config.json")
    if isinstance(cached, str):
        try:
            return load_tokenizer(DEFAULT_BASE_MODEL), DEFAULT_BASE_MODEL, None
        except GamjeongError:
            pass
    note = f"'{DEFAULT_BASE_MODEL}' tokenizer is not available locally: counted whitespace words; pass --tokenizer DIR."
    return None, "whitespace words", note


def inspect_file(
    config: InspectConfig, tokenizer: object | None = None, token_unit: str | None = None
) -> FileInspection:
    """Class counts, text lengths and what cleaning would drop for one file."""
    from gamjeong.training.data import clean_labelled_rows, label_counts, read_labelled_file_with_report

    frame, report = read_labelled_file_with_report(
        config.path, text_column=config.text_column, label_column=config.label_column, encoding=config.encoding
    )
    cleaned = clean_labelled_rows(frame, report)
    note = None
    if tokenizer is None and token_unit is None:
        tokenizer, token_unit, note = _load_counting_tokenizer(config.tokenizer)
    texts = frame["text"].tolist()
    if tokenizer is not None:
        token_lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    else:
        token_lengths = [len(t.split()) for t in texts]
    return FileInspection(
        report=report,
        rows_per_class=label_counts(cleaned),
        chars=LengthStats.of([len(t) for t in texts], config.max_length),
        tokens=LengthStats.of(token_lengths, config.max_length),
        token_unit=token_unit or "whitespace words",
        note=note,
    )


def inspect_path(config: InspectConfig) -> list[FileInspection]:
    """One file, or every split file (train, dev/validation, test) of a data directory."""
    from gamjeong.training.data import find_split_files

    path = config.path.expanduser()
    if not path.exists():
        raise GamjeongError(f"'{path}' does not exist.")
    files = list(find_split_files(path).values()) if path.is_dir() else [path]
    tokenizer, unit, note = _load_counting_tokenizer(config.tokenizer)
    results = []
    for file in files:
        result = inspect_file(config.model_copy(update={"path": file}), tokenizer, unit)
        result.note = note
        results.append(result)
    return results


def render_inspection(result: FileInspection, console) -> None:
    """Rich tables for one file."""
    from rich.table import Table

    report = result.report
    total = sum(result.rows_per_class.values())
    classes = Table(title=f"{report.path}  ({report.layout}, encoding {report.encoding or 'xlsx'})")
    classes.add_column("id", justify="right")
    classes.add_column("class")
    classes.add_column("rows", justify="right")
    classes.add_column("share", justify="right")
    for emotion in EMOTIONS:
        count = result.rows_per_class[emotion.name]
        share = f"{count / total:.1%}" if total else "-"
        classes.add_row(str(emotion.id), f"{emotion.name} {emotion.name_ko}", str(count), share)
    classes.add_row("", "total (after cleaning)", str(total), "")
    console.print(classes)

    lengths = Table(title="Text length", caption=f"tokens counted with {result.token_unit}")
    for column in ("unit", "min", "mean", "median", "p95", "max", "> max-length"):
        lengths.add_column(column, justify="right" if column != "unit" else "left")
    for unit, stats in (("characters", result.chars), ("tokens", result.tokens)):
        lengths.add_row(
            unit,
            str(stats.min),
            f"{stats.mean:.1f}",
            f"{stats.median:.0f}",
            f"{stats.p95:.0f}",
            str(stats.max),
            str(stats.over_max_length) if unit != "characters" else "",
        )
    console.print(lengths)

    dropped = Table(title="Cleaning")
    dropped.add_column("what")
    dropped.add_column("rows", justify="right")
    dropped.add_row("rows read", str(report.rows_read))
    dropped.add_row("empty texts", str(report.dropped_empty))
    if report.layout == "goemotions-tsv":
        dropped.add_row("labels of more than one class", str(report.dropped_multi_class))
    dropped.add_row("exact duplicates", str(report.dropped_duplicates))
    dropped.add_row(f"conflicting labels ({report.conflicting_texts} texts)", str(report.dropped_conflicting))
    dropped.add_row("rows kept", str(report.rows_kept))
    console.print(dropped)
    if result.note:
        console.print(f"note: {result.note}")
