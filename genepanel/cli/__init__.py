"""The ``genepanel`` command: a thin Typer layer over :mod:`genepanel.api`."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from genepanel.cli import benchmark as _benchmark
from genepanel.cli import compare as _compare
from genepanel.cli import impute as _impute
from genepanel.cli import select as _select


class _NoBoolHelp:
    """``--help`` shown without a ``<bool>`` label."""

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)  # type: ignore[misc]
        if opt is not None:
            opt.metavar = ""
        return opt


class _Command(_NoBoolHelp, TyperCommand):
    """A command whose ``--help`` flag shows no ``<bool>`` label."""


class _Group(_NoBoolHelp, TyperGroup):
    """The root command, with the same ``--help`` display."""


app = typer.Typer(
    cls=_Group,
    name="genepanel",
    help="Design gene panels from omics data with concrete autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("select", cls=_Command)(_select.select)
app.command("impute", cls=_Command)(_impute.impute)
app.command("compare-landmarks", cls=_Command)(_compare.compare_landmarks)
app.command("benchmark", cls=_Command)(_benchmark.benchmark)


def _version(value: bool) -> None:
    if value:
        from genepanel import __version__

        typer.echo(f"genepanel {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, metavar="", help="Print the version and exit."
    ),
) -> None:
    """Design gene panels from omics data with concrete autoencoders."""


def main() -> None:
    """Console-script entry point."""
    app()
