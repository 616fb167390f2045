"""Output layouts shared by a model (which makes the tensor) and the code that reads it (which may run without
torch, in a server). Core layer: imports nothing of edgeprune's, so both sides import it without a circle."""

# TinyDet (models/tinydet.py), decoded by detection/detector.py: one tensor at stride STRIDE, `num_classes`
# heat-map logits then BOX_CHANNELS box channels.
STRIDE = 4
BOX_CHANNELS = 4  # log w, log h (output cells), offset x, offset y (fraction of a cell)
