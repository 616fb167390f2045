"""How a run is named in tables and plots: its method label, the variant that makes a curve of its own,
its options in a few words and the sparsity it asked for."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Label(NamedTuple):
    method: str  # dense, a PaI criterion, reconvene-<conversion>-<criterion>, imp, dnnshifter
    variant: str  # everything but sparsity, IMP level and budget: runs of one variant make one curve
    options: str
    sparsity_requested: float | None


def describe(method: str | None, options: dict, *, level: int | None = None, density: float | None = None,
             source: str | None = None, target: dict | None = None) -> Label:
    """The label of a run made by `method` (None: dense training) with `options`; an IMP level gives its
    `level` and `density`, a DNNShifter run its `source`, a budgeted run its `target` (metric, value)."""
    o = options
    if method is None:
        return Label("dense", "", "", 0.0)
    if method == "imp":
        variant = (f"magnitude, scope {o.get('scope', 'global')}, −{o.get('fraction', 0):.0%}/level, "
                   f"rewind {o.get('rewind_iter', 0)}")
        return Label("imp", variant, f"level {'?' if level is None else level}, {variant}", 1 - density)
    if method == "dnnshifter":
        return Label("dnnshifter", "", f"from {Path(source or '?').name}", None)
    words = [str(o.get("criterion", "?"))]
    if method == "reconvene":
        conversion = o.get("conversion", "?")
        if conversion == "width" and o.get("width_rule", "channels") != "channels":
            conversion = f"width-{o['width_rule']}"
        words = [f"{o.get('criterion')}→{conversion}"]
        if o.get("reference", "global") != "global":
            words.append(f"reference {o['reference']}")
        if o.get("round_to"):
            words.append(f"round to {o['round_to']}")
        method = f"reconvene-{conversion}-{o.get('criterion')}"
    else:  # prune at initialisation: the criterion names the method
        method = o.get("criterion", method)
    words.append(f"scope {o.get('scope', 'global')}")
    if o.get("rounds"):
        words.append(f"{o['rounds']} rounds")
    variant = ", ".join(words)
    if target:
        words.append(f"budget {target['metric']} {target['value']:g}")
    return Label(method, variant, ", ".join(words), o.get("sparsity"))
