"""edgeprune: pruned variants of deep neural networks for edge devices, measured on the device's runtime."""

__version__ = "0.1.0"
