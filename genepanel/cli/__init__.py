"""The ``genepanel`` command: a thin Typer layer over :mod:`genepanel.api`."""

from __future__ import annotations

import typer

from genepanel.cli import benchmark as _benchmark
from genepanel.cli import compare as _compare
from genepanel.cli import impute as _impute
from genepanel.cli import select as _select

app = typer.Typer(
    name="genepanel",
    help="Design gene panels from omics data with concrete autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("select")(_select.select)
app.command("impute")(_impute.impute)
app.command("compare-landmarks")(_compare.compare_landmarks)
app.command("benchmark")(_benchmark.benchmark)


def _version(value: bool) -> None:
    if value:
        from genepanel import __version__

        typer.echo(f"genepanel {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Design gene panels from omics data with concrete autoencoders."""


def main() -> None:
    """Console-script entry point."""
    app()
