"""`edgeprune neuroflux`: train under a memory budget with NeuroFlux's block-wise local learning; the run's model is
the best early exit."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import handled, start_run, training_options


def register(app: typer.Typer) -> None:
    app.command()(handled(training_options(neuroflux)))


def neuroflux(
    memory_budget: Annotated[str, typer.Option(help="Training memory budget, e.g. 96MiB, 1.5GiB or 200MB: every "
                                               "block (its layers, auxiliary heads, optimiser state and one batch's "
                                               "activations) is planned to fit it. It bounds what training adds to "
                                               "the process's resident set, not the process's total (Python, torch "
                                               "and the data set come on top): report.json records both.")],
    exit_tolerance: Annotated[float, typer.Option(help="Choose the earliest exit within this many accuracy points "
                                                  "of the best exit (on the validation split).")] = 1.0,
    val_size: Annotated[int, typer.Option(help="Validation samples carved from the training split, on which the "
                                          "exit is chosen.")] = 1000,
    min_batch: Annotated[int, typer.Option(help="Smallest batch a block may train with.")] = 8,
    max_batch: Annotated[int, typer.Option(help="Largest batch a block may train with.")] = 512,
    aux_min_width: Annotated[int, typer.Option(help="Fewest filters of an auxiliary head (early layers, large "
                                               "maps).")] = 8,
    aux_max_width: Annotated[int, typer.Option(help="Most filters of an auxiliary head (late layers).")] = 64,
    aux_pool: Annotated[int, typer.Option(help="An auxiliary head pools its map to this many × this many.")] = 2,
    aux_hidden: Annotated[int, typer.Option(help="Hidden units of an auxiliary head's MLP.")] = 128,
    homogeneity: Annotated[float, typer.Option(help="A layer joins the block before it while the block's batch "
                                               "stays at least this fraction of what it was.")] = 0.5,
    lr_scaling: Annotated[str, typer.Option(help="How a block's learning rate follows its batch (from --lr at "
                                            "--batch-size): sqrt, linear or none.")] = "sqrt",
    headroom: Annotated[float, typer.Option(help="Share of the budget kept free for the accountant's error (it "
                                            "predicts within about ±15 % on CPU).")] = 0.1,
    cache_dtype: Annotated[str, typer.Option(help="float32 or float16 (half the disk) for the cached block "
                                             "outputs.")] = "float32",
    **args,
) -> None:
    """Train under a memory budget (NeuroFlux): block by block with local losses, each block at the largest batch
    that fits, its outputs cached on disk; save the best early exit as the run's model into runs/NAME/.

    --resume continues at the first block not finished. Auxiliary widths, blocking and learning-rate scaling are
    reconstructed (the paper's method section was not readable): see the options.

    Example: [bold]edgeprune neuroflux -m vgg11 -d fashion-mnist --subset 10000 -e 1 --memory-budget 96MiB[/]
    """
    from ..neuroflux.train import Settings

    settings = Settings(memory_budget=memory_budget, exit_tolerance=exit_tolerance, val_size=val_size,
                        min_batch=min_batch, max_batch=max_batch, aux_min_width=aux_min_width,
                        aux_max_width=aux_max_width, aux_pool=aux_pool, aux_hidden=aux_hidden,
                        homogeneity=homogeneity, lr_scaling=lr_scaling, headroom=headroom, cache_dtype=cache_dtype)
    start_run("neuroflux", args, {"name": "neuroflux", **settings.to_dict()})
