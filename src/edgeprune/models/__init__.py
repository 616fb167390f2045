"""Models by name: `create`, `list_models`, `register`, `ModelSpec` (see registry.py)."""

# Importing the model modules registers their models.
# chain: the early-exit model of a NeuroFlux run, rebuilt by name from its base model's spec like any other.
from edgeprune.models import chain, cifar_mobilenet, cifar_resnet, cifar_vgg, lenet, tinydet, vgg5  # noqa: F401
from edgeprune.models.registry import ModelSpec, create, list_models, register, require_task, task_of

__all__ = ["ModelSpec", "create", "list_models", "register", "require_task", "task_of"]
