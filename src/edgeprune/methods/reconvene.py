"""Reconvene: structured pruning at initialisation (Eccles, Wong, Varghese, CCGrid 2024; papers.md §1).

1. Unstructured pruning at init (any criterion) to sparsity p.
2. Pruning Sensitivity Evaluator: a layer (or a group of layers whose channels are tied, e.g. by a
   residual add) whose sparsity exceeds the reference (p, or the mean layer sparsity) is non-sensitive:
   the criterion found it redundant. `reference="all"` converts every layer (no sensitivity test).
3. Non-sensitive layers become structured: `width` keeps ⌈√(1 − s)·C⌉ channels (⌈(1 − s)·C⌉ with
   width_rule="channels") ranked by summed score and turns dense; `dead` removes only channels with no
   surviving weight. Sensitive layers keep their mask.
4. Resilient Layer Rectifier: layers whose shape changed are re-initialised for their new fan-in/out;
   a masked layer among them gets a fresh mask from the criterion, keeping its number of weights.
5. The smaller model trains (the caller's job), sensitive layers' masks in force.

The paper's exact criteria are unpublished; this is the reconstruction of papers.md §1, with the
choices (conversion, reference) configurable.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import masks, structure, surgery
from ..dead import dead_channels
from ..errors import ConfigError
from ..progress import Reporter
from .pai import PaIOptions, make_scorer, prune_at_init
from .registry import option, register

# "all" (issue 30): the sensitive layers keep their full shape (their zeros are stored), and on VGG-16 with SynFlow
# they are a floor of about 2.9 M parameters (benchmarks/results/reconvene: 2.99 M at 0.95 and 2.95 M at 0.98 with
# the `channels` rule, whose non-zeros fall from 0.48 M to 0.20 M), so no width rule on the converted layers alone
# lets the size follow the sparsity; converting every layer does.
REFERENCES = ("global", "mean", "all")


@dataclass
class ReconveneOptions(PaIOptions):
    conversion: str = option("width", "Reconvene: width (density → channel count, dense) or dead (remove only "
                             "empty channels).")
    # benchmarks/results/reconvene/ decided the default: `channels` narrows high-sparsity stages to a few
    # channels and loses accuracy.
    width_rule: str = option("sqrt", "Reconvene width: sqrt (keep C·√d channels: each layer keeps its weight "
                             "budget when its neighbours shrink too) or channels (C·d).")
    reference: str = option("global", "Reconvene: a layer sparser than this is non-sensitive: global (the "
                            "sparsity) or mean (mean layer sparsity); all: every layer is converted (no "
                            "sensitivity test), so the model's size follows the sparsity past 0.95.")
    round_to: int | None = option(None, "Keep channel counts multiples of this.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conversion not in ("width", "dead"):
            raise ConfigError(f"conversion must be 'width' or 'dead', got {self.conversion!r}")
        if self.width_rule not in structure.WIDTH_RULES:
            raise ConfigError(f"width_rule must be one of {list(structure.WIDTH_RULES)}, got {self.width_rule!r}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to}")

    def pai(self) -> PaIOptions:
        return PaIOptions(**{k: v for k, v in asdict(self).items() if k in PaIOptions.__dataclass_fields__})


def _label(o: dict) -> tuple[str, list[str]]:
    """Reconvene runs are named reconvene-<conversion>-<criterion>; reference and rounding make variants."""
    conversion = o.get("conversion", "?")
    if conversion == "width" and o.get("width_rule", "channels") != "channels":
        conversion = f"width-{o['width_rule']}"
    words = [f"{o.get('criterion')}→{conversion}"]
    if o.get("reference", "global") != "global":
        words.append(f"reference {o['reference']}")
    if o.get("round_to"):
        words.append(f"round to {o['round_to']}")
    words.append(f"scope {o.get('scope', 'global')}")
    if o.get("rounds"):
        words.append(f"{o['rounds']} rounds")
    return f"reconvene-{conversion}-{o.get('criterion')}", words


@register("reconvene", kind="init", options=ReconveneOptions, label=_label,
          summary="structured pruning at initialisation: redundant layers become narrower (physically smaller)",
          budget_hint="let Reconvene convert more layers (--reference mean), or prune the sensitive layers with "
                      "another method: it leaves them unstructured")
def reconvene(
    model: nn.Module, opts: ReconveneOptions, batches: Iterable | None, input_shape: tuple[int, ...],
    progress: Reporter | None = None,
) -> dict:
    """Prune `model` in place as Reconvene does; return the report of every decision."""
    t0 = time.perf_counter()
    data = list(itertools.islice(batches, opts.score_batches)) if batches is not None else None
    pai_info = prune_at_init(model, opts.pai(), data, input_shape, progress)
    names = [n.rpartition(".")[0] for n in masks.prunable(model, opts.include, opts.exclude)]
    x = torch.zeros(1, *input_shape)

    # (ii) Pruning Sensitivity Evaluator, over groups of conv layers whose channels are tied
    groups = [g for g in structure.channel_groups(model, x)
              if all(n in names and isinstance(model.get_submodule(n), nn.Conv2d) for n in g)]
    sparsity = {tuple(g): structure.group_sparsity(model, g) for g in groups}
    layer_sparsity = [structure.group_sparsity(model, [n]) for g in groups for n in g]
    if opts.reference == "all":
        reference = None
        non_sensitive = list(groups)
    else:
        reference = (1 - pai_info["density"] if opts.reference == "global"
                     else sum(layer_sparsity) / len(layer_sparsity))
        non_sensitive = [g for g in groups if sparsity[tuple(g)] > reference]

    # (iii) per-channel decisions for the non-sensitive groups
    s = make_scorer(opts, data, input_shape)(model) if opts.conversion == "width" else None
    keep, not_converted = {}, {}
    for g in non_sensitive:
        if opts.conversion == "width":
            cs = structure.channel_scores(model, s, g)
            if cs is None:
                not_converted[", ".join(g)] = "its layers differ in width (a concatenation)"
                continue
            kept = structure.density_to_width(cs, 1 - sparsity[tuple(g)], opts.width_rule)
        else:
            dead = torch.stack([dead_channels(model)[n] for n in g]).all(0)
            kept = (~dead).nonzero().flatten().tolist() or [0]
        keep.update({n: kept for n in g})

    # (iv) materialise, then rectify what changed shape; masks stay where a layer stays unstructured
    shapes = {n: structure.parameter_shapes(m) for n, m in model.named_modules()}
    widths = {n: surgery.width(model.get_submodule(n)) for n in names}
    report = surgery.materialize(model, keep, x, round_to=opts.round_to)
    converted = {n for n in report.kept if n in keep} if opts.conversion == "width" else set()
    remaining = {k: m for k, m in report.masks.items() if k.rpartition(".")[0] not in converted and not m.all()}
    rectified = structure.rectify(model, shapes)
    # A masked layer that lost inputs was re-initialised: its old mask, sliced, no longer fits (it can even
    # have lost every surviving weight), so the criterion chooses again. The layer keeps the number of
    # weights the criterion gave it (all of them, if it is now smaller than that): its inputs narrowing
    # is no reason to prune it further.
    refit = [k for k in remaining if k.rpartition(".")[0] in rectified]
    if refit:
        budget = {f"{row['layer']}.weight": row["kept"] for row in pai_info["layers"]}
        fresh = make_scorer(opts, data, input_shape)(model)
        for k in refit:
            remaining[k] = masks.top_k(fresh[k].flatten().double(), max(1, budget[k])).view_as(fresh[k]).float()
    masks.apply(model, {k: m for k, m in remaining.items() if not m.all()})
    return {
        "method": "reconvene", "options": opts.to_dict(), "prune_seconds": time.perf_counter() - t0,
        "pai": {k: pai_info[k] for k in ("rounds", "prune_seconds", "layers")},
        "reference_sparsity": reference,
        "groups": [{"layers": g, "sparsity": sparsity[tuple(g)], "sensitive": g not in non_sensitive,
                    "width_before": widths[g[0]], "width_after": surgery.width(model.get_submodule(g[0]))}
                   for g in groups],
        "not_converted": {**not_converted, **report.skipped},
        "rectified": rectified,
        "masks_rechosen": [k.rpartition(".")[0] for k in refit],
        "layers": masks.table(model, [f"{n}.weight" for n in names]),
    }
