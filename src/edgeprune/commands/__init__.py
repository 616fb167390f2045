"""CLI commands that live outside `cli.py`: one module per command family, each with `register(app)`.

`cli.COMMAND_MODULES` lists them. A module here imports typer (and `..cli` for the shared helpers) at module level
and the library inside its command functions, so `edgeprune --help` never imports torch.
"""
