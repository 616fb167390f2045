"""The `edgeprune` command: parsing and printing only; the library does the work.

`app.py` holds the typer app and registers every command family; `common.py` the helpers they share (consoles,
error handling, progress bars, the training options); one module per family of commands (`making.py`: models,
train, prune, shrink; `results.py`: compare, sweep, report; `saved.py`, `quantize.py`, `neuroflux.py`,
`portfolio.py`, `serve.py`, `partition.py`, `detect.py`, `fl.py`). A command module imports typer at module level and
the library inside its functions, so `edgeprune --help` never imports torch.
"""

from .app import app, main

__all__ = ["app", "main"]
