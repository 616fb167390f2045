"""Reconvene's `reference="all"` (issue 30): every layer converted, so the size follows the sparsity."""

import math

import pytest
import torch
from torch import nn

from edgeprune import masks, models
from edgeprune.errors import ConfigError
from edgeprune.methods.reconvene import ReconveneOptions, reconvene

SHAPE = (1, 12, 12)


def _pruned(sparsity: float, reference: str) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = models.create("conftest:small_vgg", num_classes=10, in_channels=1)
    info = reconvene(model, ReconveneOptions(criterion="synflow", sparsity=sparsity, rounds=10, min_layer_density=0,
                                             reference=reference), None, SHAPE, progress=False)
    return model, info


def _params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith(("weight", "weight_orig")) and p.dim() > 1)


def test_all_converts_every_layer_to_its_width():
    model, info = _pruned(0.9, "all")
    widths = {n: m.out_channels for n, m in models.create("conftest:small_vgg", 10, 1).named_modules()
              if isinstance(m, nn.Conv2d)}
    assert info["groups"] and not any(g["sensitive"] for g in info["groups"]) and info["reference_sparsity"] is None
    for g in info["groups"]:
        (layer,) = g["layers"]
        assert g["width_after"] == math.ceil(math.sqrt(1 - g["sparsity"]) * widths[layer] - 1e-9)
    # a layer narrowed is dense; one whose width did not change keeps its mask, as under any reference
    narrowed = {g["layers"][0] for g in info["groups"] if g["width_after"] < g["width_before"]}
    assert narrowed and not {name for name, _, _ in masks.masked_modules(model)} & narrowed
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_all_keeps_shrinking_where_global_stalls():
    sizes = {(ref, s): _params(_pruned(s, ref)[0]) for ref in ("global", "all") for s in (0.9, 0.97)}
    assert sizes[("all", 0.97)] < sizes[("all", 0.9)]
    assert sizes[("all", 0.9)] < sizes[("global", 0.9)] and sizes[("all", 0.97)] < sizes[("global", 0.97)]
    shrink_all = sizes[("all", 0.9)] / sizes[("all", 0.97)]
    assert shrink_all > sizes[("global", 0.9)] / sizes[("global", 0.97)]


def test_unknown_reference_names_the_choices():
    with pytest.raises(ConfigError, match="reference must be one of global, mean, all, got 'some'"):
        ReconveneOptions(reference="some")
