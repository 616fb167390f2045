"""How a run is named in tables and plots: its method label, the variant that makes a curve of its own,
its options in a few words and the sparsity it asked for."""

from __future__ import annotations

from typing import NamedTuple

from .. import kinds
from ..methods import registry


class Label(NamedTuple):
    method: str  # dense, a PaI criterion, reconvene-<conversion>-<criterion>, imp, or a run kind's (dnnshifter)
    variant: str  # everything but sparsity, IMP level and budget: runs of one variant make one curve
    options: str
    sparsity_requested: float | None


def describe(method: str | None, options: dict, *, level: int | None = None, density: float | None = None,
             source: str | None = None, target: dict | None = None) -> Label:
    """The label of a run made by `method` (None: dense training) with `options`, in the method's own words
    (methods.registry) or, for a run kind that labels its own runs (kinds/: DNNShifter's, NeuroFlux's), the kind's;
    a level of a schedule (IMP) gives its `level` and `density`, a run made from another its `source`, a budgeted
    run its `target` (metric, value)."""
    if method is None:
        return Label("dense", "", "", 0.0)
    kind = kinds.by_method(method)
    if kind is not None and kind.label is not None:
        return Label(*kind.label(options, source), None)
    name, words = registry.describe(method, options)
    variant = ", ".join(words)
    if density is not None and level is not None or method in registry.list_methods("levels"):
        return Label(name, variant, f"level {'?' if level is None else level}, {variant}",
                     None if density is None else 1 - density)
    budget = [f"budget {target['metric']} {target['value']:g}"] if target else []
    return Label(name, variant, ", ".join([*words, *budget]), options.get("sparsity"))
