"""Checks of values where they enter (options, job specs, records read back): one ConfigError naming the value,
its place and what it must be. Shared by the deployment commands so that each bound is written once."""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from typing import Any

from .errors import ConfigError


def number(value: Any, name: str, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None, integer: bool = False, hint: str = "") -> Any:
    """`value` if it is a finite number (an int with `integer`; never a bool or a string) within the bounds given;
    else a ConfigError such as "rounds must be an integer >= 1, got 'three'"."""
    bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else "",
              f"< {below:g}" if below is not None else "", f"<= {at_most:g}" if at_most is not None else ""]
    want = f"{'an integer' if integer else 'a finite number'} {' and '.join(b for b in bounds if b)}".strip()
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        raise ConfigError(f"{name} must be {want}, got {value!r}" + (f" ({hint})" if hint else ""))
    return value


def mapping(value: Any, name: str, keys: dict[str, bool] | None = None) -> dict:
    """`value` if it is a mapping (with `keys`: every required key present, no unknown key)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of keys to values, got {value!r}")
    if keys is not None:
        unknown = sorted(set(value) - set(keys), key=str)
        if unknown:
            raise ConfigError(f"{name} has unknown key {unknown[0]!r}; allowed: {', '.join(sorted(keys))}")
        missing = [k for k, required in keys.items() if required and k not in value]
        if missing:
            raise ConfigError(f"{name} lacks {missing[0]!r}; give it (see the README's example)")
    return value


def name(value: Any, what: str) -> str:
    """`value` if it is a plain name (letters, digits, '-', '_', '.'; not starting with '.'), usable in a file
    name: a tier, a variant."""
    ok = isinstance(value, str) and value and not value.startswith(".") and all(
        c.isalnum() or c in "-_." for c in value)
    if not ok:
        raise ConfigError(f"{what} {value!r} is not a plain name: use letters, digits, '-', '_' or '.', e.g. 'edge'")
    return value


# Specs of `record`: "str", "bool", "int", "int+" (>= 1), "num" (finite), "num+" (finite, >= 0), "num>0", a dict
# of specs (keys missing from the record are refused), [spec] (a list of such), or ("?", spec) (None allowed).
Spec = Any


def record(value: Any, spec: Spec, where: str) -> Any:
    """`value` if it fits `spec` (see Spec); else a ConfigError naming the first field that does not."""
    if isinstance(spec, tuple):
        return None if value is None else record(value, spec[1], where)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} is {_short(value)}, not an object")
        for key, sub in spec.items():
            if key not in value and not isinstance(sub, tuple):
                raise ConfigError(f"{where or 'the record'} lacks {key!r}")
            record(value.get(key), sub, f"{where}.{key}")
        return value
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where} is {_short(value)}, not a list")
        for i, v in enumerate(value):
            record(v, spec[0], f"{where}[{i}]")
        return value
    kinds = {"str": str, "bool": bool, "dict": dict}
    if spec in kinds:
        if not isinstance(value, kinds[spec]):
            raise ConfigError(f"{where} is {_short(value)}, not {'a string' if spec == 'str' else spec}")
        return value
    bounds = {"int": {}, "int+": {"at_least": 1}, "int0": {"at_least": 0}, "num": {}, "num+": {"at_least": 0},
              "num>0": {"above": 0}}[spec]
    return number(value, where, integer=spec.startswith("int"), **bounds)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_types(cls, values: dict, where: str) -> None:
    """ConfigError naming the field, unless every value in `values` fits its field of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _fits(value, hints[key]):
            raise ConfigError(f"{where}: {key!r} is {value!r}, which is not {_type_name(hints[key])}; "
                              "fix or remove it")


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list, collections.abc.Sequence):
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
