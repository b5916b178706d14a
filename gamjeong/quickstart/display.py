"""How quickstart talks: a numbered header per stage, spinners while it works, and its tables."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gamjeong.labels import EMOTIONS

STAGE_COUNT = 7


class StageDisplay:
    """A numbered header per stage, a spinner while it works, and its wall time when it is done."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self._number = 0

    def _header(self, title: str) -> None:
        self._number += 1
        self.console.rule(f"[bold cyan]{self._number}/{STAGE_COUNT}  {title}", align="left")

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[StageDisplay]:
        self._header(title)
        started = time.perf_counter()
        yield self
        self.timings[key] = round(time.perf_counter() - started, 2)
        self.console.print(f"[green]✓[/] {title} done in {self.timings[key]:.1f} s")

    def skip(self, key: str, title: str, why: str) -> None:
        self._header(title)
        self.skipped[key] = why
        self.console.print(f"[yellow]skipped:[/] {why}")

    def final(self, title: str) -> None:
        self._header(title)

    def say(self, message: str) -> None:
        self.console.print(f"  {message}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[bold yellow]{escape(message)}[/]")

    @contextmanager
    def working(self, message: str) -> Iterator[Any]:
        with self.console.status(f"[cyan]{escape(message)}", spinner="dots") as status:
            yield status


def quality_tables(results: dict[str, dict[str, Any]], title: str) -> list[Table]:
    """Accuracy and macro-F1 per held-out set, then per-class F1 (emotions as rows, so it fits a narrow terminal)."""
    overall = Table(title=title, title_justify="left")
    for column in ("held-out set", "texts", "accuracy", "macro-F1"):
        overall.add_column(column, justify="left" if column == "held-out set" else "right")
    per_class = Table(title="F1 per emotion", title_justify="left")
    per_class.add_column("emotion")
    for name, metrics in results.items():
        overall.add_row(
            escape(name), str(metrics["num_examples"]), f"{metrics['accuracy']:.3f}", f"{metrics['macro_f1']:.3f}"
        )
        per_class.add_column(escape(name), justify="right")
    for emotion in EMOTIONS:
        rows = [m["per_class"][emotion.name] for m in results.values()]
        per_class.add_row(
            f"{emotion.name} {emotion.name_ko}",
            *(f"{row['f1']:.2f} ({row['support']})" if row["support"] else "-" for row in rows),
        )
    return [overall, per_class]


def shown(path: str | Path | None) -> str | None:
    """A path as short as it can be said: relative to the working directory when it lies inside it."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
