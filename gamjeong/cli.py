"""The `gamjeong` command line. Each subpackage registers the commands that drive its own code."""

from __future__ import annotations

import logging
from typing import Any

import typer
import typer.core

from gamjeong.errors import GamjeongError


class _OneSentenceErrors(typer.core.TyperGroup):
    """Turns a GamjeongError raised by any command, and a flag value the command line itself refuses (a choice that
    is not one of its Enum's, a number that is not one), into one line on stderr and exit code 2, never a traceback
    or a usage box."""

    def invoke(self, ctx: Any) -> Any:
        # typer 0.29 ships its own click (typer._click); an older typer uses click itself
        try:
            from typer._click.exceptions import NoArgsIsHelpError, UsageError
        except ImportError:  # pragma: no cover
            from click.exceptions import NoArgsIsHelpError, UsageError

        try:
            return super().invoke(ctx)
        except GamjeongError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        except UsageError as exc:
            if isinstance(exc, NoArgsIsHelpError):
                raise
            typer.secho(f"error: {exc.format_message().replace('Value error, ', '')}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=exc.exit_code) from None


app = typer.Typer(
    cls=_OneSentenceErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="gamjeong (감정): Korean emotion classification - train, export to ONNX, serve over gRPC, benchmark.",
)


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register_subcommands() -> None:
    # Imported here so that `gamjeong --help` stays fast: each module imports torch & co. inside its commands.
    from gamjeong import commands

    commands.register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
