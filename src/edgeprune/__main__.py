"""`python -m edgeprune ...`: the `edgeprune` command, where its script is not on PATH (a `--target` install)."""

from edgeprune.cli.app import main

main()
