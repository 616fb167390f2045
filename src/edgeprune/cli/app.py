"""The `edgeprune` app: its global flags, and every command family's module registered on it, in the order
`edgeprune --help` lists them."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import detect, fl, making, neuroflux, partition, portfolio, quantize, results, saved, serve
from .common import console, state

app = typer.Typer(
    help="Prune deep neural networks for edge devices, and measure what each variant costs and keeps.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeprune {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    state.update(debug=debug, quiet=quiet)


# One module per command family, each with `register(app)`; add a module here.
for family in (making, results, saved, quantize, portfolio, serve, partition, detect, fl, neuroflux):
    family.register(app)


def main() -> None:
    app()
