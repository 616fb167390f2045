"""The planner interface: what a partition planner is given and returns, and the registry `partition plan` finds
it in by name.

A planner is a function `(benches, roles, links, opts) -> plans`: the tiers' bench records (`records.Bench`, by
tier, already calibrated unless `opts.raw_blocks`), each tier's role (device, edge, cloud), the links between them,
and the `Options` the user gave. It returns every candidate `records.Plan` it prices; `plan.plan_model` then applies
the constraints, keeps the fastest `opts.top` and writes the plan file, so every planner's plans are constrained,
ranked, written and run (`partition run`) the same way.

A new planner is one module that declares itself with `@register("name")`. Built-in planners are named in
`BUILTIN`; others are imported from the `edgeprune.planners` entry-point group and from `$EDGEPRUNE_PLANNERS`
(comma-separated modules), or by importing their module (tests/plugin_planner.py is the complete example).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import plugins
from ..errors import ConfigError
from .records import Bench, Link, Plan

BUILTIN = ("edgeprune.partition.scission",)
DEFAULT = "scission"


@dataclass
class Options:
    """What `partition plan` asks of every plan (the CLI's options): the planner, roles, transfer layer,
    constraints, transfer dtypes."""

    device: Sequence[str] = ()
    edge: Sequence[str] = ()
    cloud: Sequence[str] = ()
    tl: bool = False
    split: int | None = None
    blocks: Sequence[str] = ()
    max_upload: Sequence[str] = ()
    max_time: Sequence[str] = ()
    raw_blocks: bool = False
    top: int = 5
    wires: Sequence[str] = ("fp32",)  # transfer dtypes to choose among, with the cut (wire.WIRES)
    planner: str = DEFAULT


class Planner(Protocol):
    def __call__(self, benches: Mapping[str, Bench], roles: Mapping[str, str],
                 links: Mapping[frozenset[str], Link], opts: Options) -> Iterable[Plan]: ...


_PLANNERS: dict[str, Planner] = {}
_loaded = False


def register(name: str) -> Callable[[Planner], Planner]:
    """Declare a planner under `name` (a decorator)."""

    def add(fn: Planner) -> Planner:
        if name in _PLANNERS and _PLANNERS[name] is not fn:
            raise ValueError(f"a planner named {name!r} is already registered")
        _PLANNERS[name] = fn
        return fn

    return add


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    plugins.import_declared(BUILTIN, "planner", "EDGEPRUNE_PLANNERS", "edgeprune.planners")


def names() -> list[str]:
    _load()
    return sorted(_PLANNERS)


def get(name: str) -> Planner:
    """The planner registered as `name`, or a ConfigError naming those there are."""
    _load()
    if name not in _PLANNERS:
        raise ConfigError(f"--planner {name!r}: no such planner; choose from {', '.join(sorted(_PLANNERS))} (or "
                          "name its module in $EDGEPRUNE_PLANNERS)")
    return _PLANNERS[name]
