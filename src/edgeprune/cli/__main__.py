"""`python -m edgeprune.cli`: the `edgeprune` command."""

from .app import main

main()
