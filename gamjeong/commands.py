"""Registers each subpackage's commands on the root CLI (one line per stage)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from gamjeong.training.cli import register as register_training

    register_training(app)

    from gamjeong.benchmarks.cli import register as register_benchmarks

    register_benchmarks(app)

    from gamjeong.export.cli import register as register_export

    register_export(app)

    from gamjeong.server.cli import register as register_server

    register_server(app)

    from gamjeong.clients.cli import register as register_clients

    register_clients(app)

    from gamjeong.base_models.cli import register as register_base_models

    register_base_models(app)

    from gamjeong.quickstart import register as register_quickstart

    register_quickstart(app)
