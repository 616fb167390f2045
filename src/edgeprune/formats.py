"""The names and format tags of the folders edgeprune writes besides runs, in one module that imports nothing, so
that runs.py can tell them apart (only a folder of the kind a command makes is ever replaced by it) without
importing the modules that write them."""

PORTFOLIO_MANIFEST = "portfolio.json"
PORTFOLIO_FORMAT = "edgeprune.portfolio/1"
FAMILY_RECORD = "family.json"
FAMILY_FORMAT = "edgeprune.detector-family/1"
