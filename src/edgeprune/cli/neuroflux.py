"""`edgeprune neuroflux`: train under a memory budget with NeuroFlux's block-wise local learning; the run's model is
the best early exit. Its flags are generated from `neuroflux.options.Settings` (help text included)."""

from __future__ import annotations

import dataclasses

import typer

from ..neuroflux.options import Settings
from .common import handled, options_of, start_run, training_options


def register(app: typer.Typer) -> None:
    app.command()(handled(training_options(options_of(Settings)(neuroflux))))


def neuroflux(**args) -> None:
    """Train under a memory budget (NeuroFlux): block by block with local losses, each block at the largest batch
    that fits, its outputs cached on disk; save the best early exit as the run's model into runs/NAME/.

    --resume continues at the first block not finished. Auxiliary widths, blocking and learning-rate scaling are
    reconstructed (the paper's method section was not readable): see the options.

    Example: [bold]edgeprune neuroflux -m vgg11 -d fashion-mnist --subset 10000 -e 1 --memory-budget 96MiB[/]
    """
    names = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: args.pop(k) for k in list(args) if k in names})
    start_run("neuroflux", args, {"name": "neuroflux", **settings.to_dict()})
