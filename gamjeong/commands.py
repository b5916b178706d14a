"""Registers each subpackage's commands on the root CLI (one line per stage)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
