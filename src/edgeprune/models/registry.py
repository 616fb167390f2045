"""Build any model by name, timm-style: `create(name, num_classes, in_channels, **kwargs)`, `list_models()`.

Three kinds of names:
- in-house models registered with `@register` (`resnet20`, `vgg16`, `mobilenetv2`, `lenet5`, ...);
- every torchvision classifier as `tv:<name>` (`tv:resnet18`), always with fresh weights;
- any user factory as `package.module:function`, called with `num_classes=`, `in_channels=` and the kwargs.

Each model carries the `ModelSpec` that built it, so `create(**model.edgeprune_spec.to_dict())` rebuilds
its architecture from plain JSON-able values, without pickled code.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torchvision
from torch import nn

from edgeprune.errors import ConfigError, UnsupportedModelError, unknown_name

TORCHVISION_PREFIX = "tv:"

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])
_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}  # what a registered model's output means: "classify" (logits) or "detect"
TASKS = ("classify", "detect")


@dataclass(frozen=True)
class ModelSpec:
    """The arguments of `create` that built a model."""

    name: str
    num_classes: int
    in_channels: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The keyword arguments of `create`, flat: `create(**spec.to_dict())` rebuilds the model."""
        return {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels, **self.kwargs}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        """The inverse of `to_dict`."""
        kwargs = dict(values)
        try:
            return cls(kwargs.pop("name"), kwargs.pop("num_classes"), kwargs.pop("in_channels"), kwargs)
        except KeyError as e:
            raise ConfigError(f"model spec {dict(values)!r} lacks {e}; write specs with ModelSpec.to_dict()") from None


def register(name: str, task: str = "classify") -> Callable[[Factory], Factory]:
    """Decorator that adds `factory(num_classes, in_channels, **kwargs) -> nn.Module` under `name`; `task`
    says what its output is (classifiers give (N, num_classes) logits; detectors their own maps)."""
    if ":" in name or name in _FACTORIES or task not in TASKS:
        raise ValueError(f"cannot register model {name!r} for task {task!r}: names must be unique and contain no "
                         f"':', tasks are {', '.join(TASKS)}")

    def add(factory: Factory) -> Factory:
        _FACTORIES[name] = factory
        _TASKS[name] = task
        return factory

    return add


# where a model of another task is trained instead (classification commands refuse it, naming this)
TASK_COMMANDS = {"detect": "edgeprune detect train"}


def task_of(name: str) -> str:
    """What model `name`'s output is; torchvision and `package.module:function` models are classifiers."""
    return _TASKS.get(name, "classify")


def require_task(name: str, task: str, what: str) -> None:
    """Refuse model `name` unless it is a `task` model; `what` names the command that needs one."""
    if (actual := task_of(name)) != task:
        where = f"; use `{TASK_COMMANDS[actual]}` for it" if actual in TASK_COMMANDS else ""
        raise ConfigError(f"model {name!r} is a {actual!r} model and {what} takes {task!r} models only{where}; "
                          f"`edgeprune models` marks the models of other tasks")


def list_models(task: str | None = None) -> list[str]:
    """In-house model names, then every torchvision classifier as `tv:<name>`; only those of `task` if given."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown model task {task!r}; choose from {', '.join(TASKS)}")
    in_house = sorted(n for n in _FACTORIES if task is None or _TASKS[n] == task)
    return in_house + (_torchvision_models() if task in (None, "classify") else [])


def create(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """A freshly initialised model `name` (see the module docstring), with `.edgeprune_spec` set."""
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{arg} must be an integer >= 1, got {value!r}")
    if name in _FACTORIES:
        model = _call_factory(_FACTORIES[name], name, num_classes, in_channels, kwargs)
    elif name in _torchvision_models():
        model = _create_torchvision(name, num_classes, in_channels, kwargs)
    elif ":" in name and not name.startswith(TORCHVISION_PREFIX):
        model = _call_factory(_import_factory(name), name, num_classes, in_channels, kwargs)
    else:
        raise unknown_name("model", name, list_models(), hint="run `edgeprune models` to list them")
    model.edgeprune_spec = ModelSpec(name, num_classes, in_channels, dict(kwargs))
    return model


def _torchvision_models() -> list[str]:
    # module=torchvision.models keeps the classifiers and leaves out detection, segmentation, video, quantized.
    return [TORCHVISION_PREFIX + n for n in torchvision.models.list_models(module=torchvision.models)]


def _call_factory(
    factory: Callable[..., Any], name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    signature = inspect.signature(factory)
    args = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    # A factory written for RGB only may omit in_channels; that is harmless exactly when the input is RGB.
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if in_channels == 3 and "in_channels" not in signature.parameters and not takes_any:
        del args["in_channels"]
    try:
        signature.bind(**args)
    except TypeError as e:
        raise ConfigError(f"model {name!r} cannot be built with {args}: {e}; its factory takes {signature}") from None
    model = factory(**args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_factory(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"cannot load model factory {path!r} ({type(e).__name__}: {e}); name it `package.module:function` "
            "and make the module importable (install it, or put its folder on PYTHONPATH)"
        ) from e
    if not callable(factory):
        raise ConfigError(f"model factory {path!r} is a {type(factory).__name__}, not a function")
    return factory


def _create_torchvision(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = torchvision.models.get_model(
            name.removeprefix(TORCHVISION_PREFIX), weights=None, num_classes=num_classes, **kwargs
        )
    except TypeError as e:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {e}") from e
    if in_channels != 3:
        _adapt_input_channels(model, in_channels, name)
    return model


def _adapt_input_channels(model: nn.Module, in_channels: int, name: str) -> None:
    """Replace the model's first layer, a conv over RGB, by a fresh conv over `in_channels`."""
    # The first layer is the first leaf module owning parameters: torchvision registers layers in forward order.
    path, first = next(
        (p, m)
        for p, m in model.named_modules()
        if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None
    )
    if not isinstance(first, nn.Conv2d):
        raise UnsupportedModelError(
            f"cannot give model {name!r} in_channels={in_channels}: its first layer {path!r} is "
            f"{type(first).__name__}, not a convolution; use in_channels=3 and convert the data to RGB"
        )
    conv = nn.Conv2d(
        in_channels,
        first.out_channels,
        first.kernel_size,
        first.stride,
        first.padding,
        first.dilation,
        bias=first.bias is not None,
        padding_mode=first.padding_mode,
    )
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, conv)
