"""The method registry: every pruning method declares itself once, here, and the rest is derived from that.

A method is one file in `methods/` whose entry point carries `@register(...)`: its name, its kind, its
options dataclass (defaults, help text in each field's metadata, valid ranges in `__post_init__`) and how
its runs are labelled. `edgeprune prune` builds its flags from the options of every registered method, a
sweep spec's keys are checked against them, and reports label runs with the method's own `label`. Adding
a method touches its file, its tests and a spec, nothing else (the pattern of timm's `register_model` and
open_lth's dataclass hyper-parameters).

Kinds:
  "init":   prunes a freshly initialised model, which then trains with its masks (and shapes) kept;
            entry `prune(model, opts, batches, input_shape, progress) -> info dict`. Takes --target-* budgets.
  "levels": a schedule of levels from dense, each level a run of its own (IMP);
            entry `run(model, train_loader, train_cfg, opts, run_dir, finish, device, progress) -> [RunReport]`.
  "in_training": prunes during one training run (DRIVE, target rate); entry `make(opts, train_cfg, batches,
            input_shape, saved, progress)` -> a `train.Callback` that prunes during training (its epoch 0 ends
            before training starts), calls `saved(model, info)` once done, and keeps `info`; it may have
            `finalize(model) -> model`, called after training (a physically smaller model, say).
  "trained": starts from the model of a finished dense run (`--from RUN`), in its data and training setup;
            entry `prune(model, bundle, train_cfg, opts, target, measure_runs, device, progress, run_dir)
            -> (model, info dict)`, `target` a `budget.Target` or None; `run_dir` is the run folder, for a
            checkpoint (runs.CHECKPOINT) from which a resumed run goes on. An option `val_size` carves
            `bundle.val` from the training split (data.loaders), for stopping rules that must not see the test.

Methods outside edgeprune register the same way from their own module, imported before use (the CLI imports
the modules of the `edgeprune.methods` entry-point group, and those named in $EDGEPRUNE_METHODS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import plugins
from ..errors import ConfigError, unknown_name

KINDS = ("init", "levels", "in_training", "trained")
BUILTIN = tuple(f"edgeprune.methods.{m}" for m in ("pai", "reconvene", "imp", "drive", "target_rate", "taylor"))
NOT_OPTIONS = ("name", "target", "source")  # what a config's method entry holds beside the method's options


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    options: type  # a dataclass
    entry: Callable[..., Any]
    summary: str  # one line for --help
    # (method label, the words that make a curve of its own) from the options; None: name and non-defaults
    label: Callable[[dict], tuple[str, list[str]]] | None = None
    fixed: dict = field(default_factory=dict)  # options the name sets (a PaI method's criterion)
    budget_hint: str | None = None  # what to try when no sparsity meets a --target-* budget

    def make_options(self, values: dict):
        """The options object from `values` (a config's method entry without its name), checked."""
        fields = self.option_fields()
        unknown = sorted(set(values) - set(fields) - set(self.fixed))
        if unknown:
            raise ConfigError(f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(fields) or 'none'}")
        for k, v in self.fixed.items():
            if values.get(k, v) != v:
                raise ConfigError(f"method {self.name!r} fixes {k} to {v!r}; drop {k}={values[k]!r}")
        try:
            return self.options(**{**values, **self.fixed})
        except TypeError as e:
            raise ConfigError(f"method {self.name!r}: {e}") from None

    def option_fields(self) -> dict[str, dataclasses.Field]:
        """The options a user sets (the fixed ones excluded), in declaration order."""
        return {f.name: f for f in dataclasses.fields(self.options) if f.name not in self.fixed}


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None):
    """A field of a method's options dataclass, with the help text its --flag shows."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# One text for an option several methods declare (the CLI shows one help per flag).
ROUNDS_HELP = "Pruning rounds of the exponential schedule, re-scored each round (SynFlow and DRIVE: 100, others 1)."

_METHODS: dict[str, Method] = {}
_loaded = False


def register(name: str, *, kind: str, options: type, summary: str,
             label: Callable[[dict], tuple[str, list[str]]] | None = None, fixed: dict | None = None,
             budget_hint: str | None = None):
    """Decorator: register the function it decorates as the entry point of method `name`."""
    if kind not in KINDS:
        raise ValueError(f"method kind must be one of {KINDS}, got {kind!r}")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"the options of method {name!r} must be a dataclass")

    def decorate(entry: Callable[..., Any]) -> Callable[..., Any]:
        _METHODS[name] = Method(name, kind, options, entry, summary, label, dict(fixed or {}), budget_hint)
        return entry

    return decorate


def _load() -> None:
    """Import the built-in methods and any declared elsewhere (entry points, $EDGEPRUNE_METHODS), once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    plugins.import_declared(BUILTIN, "pruning-method", "EDGEPRUNE_METHODS", "edgeprune.methods")


def list_methods(kind: str | None = None) -> list[str]:
    _load()
    return sorted(n for n, m in _METHODS.items() if kind is None or m.kind == kind)


def get(name: str) -> Method:
    _load()
    if name not in _METHODS:
        raise unknown_name("method", str(name), _METHODS)
    return _METHODS[name]


def options_of(method: dict):
    """The options object of a config's method entry {"name": ..., **options} (a budget `target` and the
    `source` run of a "trained" method aside)."""
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError(f"a method entry needs a name, e.g. {{'name': 'synflow', 'sparsity': 0.9}}; got {method!r}")
    return get(method["name"]).make_options({k: v for k, v in method.items() if k not in NOT_OPTIONS})


def entry(name: str, given: dict) -> dict:
    """The method entry a run's config records: its name and every option, the defaults written out, so the
    config says exactly what ran (checked: bad values raise here, before anything runs)."""
    m = get(name)
    opts = m.make_options(given)
    return {"name": name, **{k: v for k, v in dataclasses.asdict(opts).items() if k not in m.fixed}}


def describe(name: str, options: dict) -> tuple[str, list[str]]:
    """(method label, words of its variant) of a run of method `name` with `options`: the method's own label,
    or, for a method that declares none (or is not installed here), its name and the options that differ
    from their defaults."""
    _load()
    if name == "pai":  # reports of earlier versions name the family; the criterion names the method
        name = str(options.get("criterion"))
    m = _METHODS.get(name)
    if m is not None and m.label is not None:
        return m.label(options)
    defaults = {} if m is None else {f.name: f.default for f in dataclasses.fields(m.options)
                                     if f.default is not dataclasses.MISSING}
    return name, [f"{k} {v}" for k, v in sorted(options.items())
                  if k != "sparsity" and k not in (m.fixed if m else {}) and defaults.get(k, object()) != v]
