"""Commands of the training stage: `data inspect`, `train`, `evaluate` and `classify`.

Heavy libraries (torch, transformers, pandas) are imported inside the commands so `gamjeong --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(no_args_is_help=True, help="Look at labelled data files before training on them.")

TEXT_COLUMN_HELP = "Column holding the text (default: text, sentence or document, any case)."
LABEL_COLUMN_HELP = "Column holding the label (default: label or emotion, any case)."
ENCODING_HELP = "Text encoding of CSV/TSV/JSONL files (default: detected; utf-8, utf-8-sig, cp949, euc-kr...)."


@data_app.command("inspect")
def inspect_command(
    path: Path = typer.Argument(..., help="A data file (.csv .tsv .jsonl .xlsx) or a folder of train/dev/test files."),
    text_column: str | None = typer.Option(None, "--text-column", help=TEXT_COLUMN_HELP),
    label_column: str | None = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="Tokenizer (hub id or folder) to count tokens with; default: the default base model's when it is "
        "available locally, else whitespace words.",
    ),
    max_length: int = typer.Option(128, "--max-length", help="Count the texts longer than this many tokens."),
) -> None:
    """Rows per class, text length in characters and tokens, duplicates and conflicting labels."""
    from gamjeong.training.inspection import InspectConfig, inspect_path, render_inspection
    from rich.console import Console

    config = InspectConfig(
        path=path,
        text_column=text_column,
        label_column=label_column,
        encoding=encoding,
        tokenizer=tokenizer,
        max_length=max_length,
    )
    console = Console()
    for result in inspect_path(config):
        render_inspection(result, console)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
