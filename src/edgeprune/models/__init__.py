"""Models by name: `create`, `list_models`, `register`, `ModelSpec` (see registry.py)."""

# Importing the model modules registers their models.
from edgeprune.models import cifar_mobilenet, cifar_resnet, cifar_vgg, lenet, tinydet  # noqa: F401
from edgeprune.models.registry import ModelSpec, create, list_models, register

__all__ = ["ModelSpec", "create", "list_models", "register"]
