"""The serving policies' registry: `register` declares a `Policy` subclass under a name, for the tasks it chooses
for; `names` and `make` are all the server, its API and the command line know of policies. The built-in policies
(policy.py) are imported on first use; others from the `edgeprune.policies` entry-point group and from
`$EDGEPRUNE_POLICIES` (comma-separated modules)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

from .. import plugins
from ..errors import ConfigError
from .interface import TASKS

if TYPE_CHECKING:
    from ..portfolio import Manifest
    from .interface import Policy

BUILTIN = ("edgeprune.serve.policy",)


_POLICIES: dict[str, type] = {}
_loaded = False


def register(name: str, tasks: Sequence[str] = TASKS) -> Callable[[type], type]:
    """Declare a `Policy` subclass as policy `name`, for portfolios of `tasks` (classify, detect)."""

    def add(cls: type) -> type:
        if name in _POLICIES and _POLICIES[name] is not cls:
            raise ValueError(f"a policy named {name!r} is already registered")
        cls.tasks = tuple(tasks)
        _POLICIES[name] = cls
        return cls

    return add


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    plugins.import_declared(BUILTIN, "serving-policy", "EDGEPRUNE_POLICIES", "edgeprune.policies")


def names(task: str | None = None) -> list[str]:
    """The policies registered (in the order declared), or those for portfolios of `task`."""
    _load()
    return [n for n, cls in _POLICIES.items() if task is None or task in cls.tasks]


def _typed(policy: str, key: str, declared, v):
    """`v` as parameter `key` of `policy` declares it, or a ConfigError naming it: no coercion (a string is not a
    number, 2.5 is not a count), null only where the parameter's default is null."""
    shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
    if v is None:
        if declared.default is None:
            return None
        raise ConfigError(f"policy {policy!r}: {key} cannot be null; leave it out for its default "
                          f"({declared.default!r})")
    hint = declared.type if isinstance(declared.type, str) else getattr(declared.type, "__name__", str(declared.type))
    if hint == "str":  # an optional string (fixed's variant) is checked by its policy, naming the choices
        if not isinstance(v, str):
            raise ConfigError(f"policy {policy!r}: {key} must be a string, got {shown}")
        return v
    kind = {"float": float, "int": int}.get(hint)
    if kind is None:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"policy {policy!r}: {key} must be a number ({kind.__name__}), got {shown}")
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an int past any float (JSON 10**400)
        finite = False
    if not finite:
        raise ConfigError(f"policy {policy!r}: {key} must be a finite number ({kind.__name__}), got {shown}")
    if kind is int and v != int(v):
        raise ConfigError(f"policy {policy!r}: {key} counts and must be a whole number, got {shown}")
    return kind(v)


def make(manifest: Manifest, name: str, **params) -> Policy:
    """The policy `name` with `params` (the keyword names of its class), each checked."""
    if name not in names():
        raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(names())}")
    cls = _POLICIES[name]
    declared = {f.name: f for f in fields(cls)}  # dataclasses.fields leaves out ClassVars (reads_outputs)
    allowed = sorted(k for k in declared if k not in ("manifest", "name") and not k.startswith("_"))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"policy {name!r} takes {', '.join(allowed) or 'no parameters'}; not {', '.join(unknown)}")
    typed = {}
    for k, v in params.items():
        typed[k] = _typed(name, k, declared[k], v)
    return cls(manifest, **typed)
