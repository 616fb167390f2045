"""Names, format tags and output layouts shared by the code that writes a thing and the code that reads it, in one
core module that imports nothing of edgeprune's: runs.py tells the folders edgeprune writes apart (only a folder of
the kind a command makes is ever replaced by it) without importing the modules that write them, and a model and
its decoder (which may run without torch, in a server) share one layout without a circle."""

PORTFOLIO_MANIFEST = "portfolio.json"
PORTFOLIO_FORMAT = "edgeprune.portfolio/1"
FAMILY_RECORD = "family.json"
FAMILY_FORMAT = "edgeprune.detector-family/1"

# TinyDet (models/tinydet.py), decoded by detection/detector.py: one tensor at stride STRIDE, `num_classes`
# heat-map logits then BOX_CHANNELS box channels.
STRIDE = 4
BOX_CHANNELS = 4  # log w, log h (output cells), offset x, offset y (fraction of a cell)
