"""The registry of run-making kinds: every way a run folder is made declares itself once, here.

A kind is the job that makes one kind of run folder, named by the command that starts it (config.json's
`command`): train, prune (every pruning method, on `methods/registry.py`), shrink (DNNShifter), quantize (INT8),
neuroflux. Its module decorates the job with `@register(name, ...)`:

    job(cfg: RunConfig, run_dir, *, overwrite=False, resume=False, progress=None) -> RunReport

and says, once, what the rest of edgeprune needs to know of its runs: its options dataclass (a config's
`method` is {"name": <name>, **options}), the `method` its reports record and how such a record is labelled in
tables, whether its model is trained whole (a "trained" pruning method may start from it), whether a sweep's
`methods` may name it, whether it is made from another run (and then how that run's config is made). `jobs.run`
dispatches to it, `edgeprune rerun` and sweeps run it, reports label it: no module names a kind of run. A kind is
one new module plus one registration (the complete example is `tests/plugin_runkind.py`); a kind outside edgeprune
registers from its own module, imported before use (or named in $EDGEPRUNE_KINDS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import plugins
from ..errors import ConfigError, unknown_name

# the modules that declare the built-in kinds, imported on first use
BUILTIN = ("edgeprune.jobs", "edgeprune.kinds.shrink", "edgeprune.kinds.quantize", "edgeprune.neuroflux.job")
DENSE, PRUNE = "train", "prune"  # the kinds of a config without a method, and with a pruning method's


@dataclass(frozen=True)
class Kind:
    name: str  # the command that starts it, recorded in config.json's `command`
    job: Callable[..., Any]
    options: type | None = None  # a dataclass of the options in its config's `method` (beside `name`)
    method: str | None = None  # the `method` its reports record, where the kind labels them (not a pruning method)
    # (method, variant, options) words of a report of it, from its options and its source run
    label: Callable[[dict, str | None], tuple[str, str, str]] | None = None
    trained: bool = False  # its model is trained whole: a "trained" pruning method may start from its run
    in_sweeps: bool = False  # a sweep's `methods` may name it, with its options as the entry's keys
    from_source: bool = False  # made from another run (config `method.source`): reports pair it with that run
    base_model: bool = False  # tables name its runs by the config's model (NeuroFlux's exit stands for its base)
    config: Callable[..., Any] | None = None  # from_source: config(source, **options) -> the RunConfig of a run

    def make_options(self, method: dict):
        """The options object of a config's method entry of this kind, checked."""
        if self.options is None:
            raise ConfigError(f"{self.name} takes no options")
        values = {k: v for k, v in method.items() if k != "name"}
        fields = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"{self.name} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(sorted(fields))}")
        return self.options(**values)


_KINDS: dict[str, Kind] = {}
_loaded = False


def register(name: str, *, options: type | None = None, method: str | None = None,
             label: Callable[[dict, str | None], tuple[str, str, str]] | None = None, trained: bool = False,
             in_sweeps: bool = False, from_source: bool = False, base_model: bool = False,
             config: Callable[..., Any] | None = None):
    """Decorator: register the function it decorates as the job of kind `name`."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"the options of run kind {name!r} must be a dataclass")
    if in_sweeps and options is None:
        raise TypeError(f"run kind {name!r}: a kind a sweep names needs an options dataclass")

    def decorate(job: Callable[..., Any]) -> Callable[..., Any]:
        _KINDS[name] = Kind(name, job, options, method, label, trained, in_sweeps, from_source, base_model, config)
        return job

    return decorate


def _load() -> None:
    """Import the modules that declare the built-in kinds and those named in $EDGEPRUNE_KINDS, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    plugins.import_declared(BUILTIN, "run-kind", "EDGEPRUNE_KINDS")


def names(*, in_sweeps: bool | None = None) -> list[str]:
    """The registered kinds (those a sweep may name, with in_sweeps=True), sorted."""
    _load()
    return sorted(n for n, k in _KINDS.items() if in_sweeps is None or k.in_sweeps == in_sweeps)


def get(name: str) -> Kind:
    _load()
    if name not in _KINDS:
        raise unknown_name("run kind", str(name), _KINDS)
    return _KINDS[name]


def find(name: str | None) -> Kind | None:
    """The kind `name`, or None (a command of another version, or none)."""
    _load()
    return _KINDS.get(name)  # type: ignore[arg-type]


def by_method(method: str | None) -> Kind | None:
    """The kind whose reports record `method` (None for a pruning method's runs, labelled by the method)."""
    _load()
    return next((k for k in _KINDS.values() if method is not None and k.method == method), None)


def of_method(method: dict) -> str:
    """The kind that makes a run of a config's method entry: none is dense training, a kind a sweep names is
    that kind, anything else a pruning method."""
    if not method:
        return DENSE
    kind = find(method.get("name"))
    return kind.name if kind is not None and kind.in_sweeps else PRUNE
