"""Masks: which weights stay. Applied with torch.nn.utils.prune so zeros stay zero in training."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import prune


def masked_modules(model: nn.Module):
    """(module name, module, parameter name) for every parameter carrying a prune mask."""
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                yield name, module, hook._tensor_name


def bake(model: nn.Module) -> nn.Module:
    """Make masks permanent: the zeros stay in the weights and the reparametrisation is removed."""
    for _, module, pname in list(masked_modules(model)):
        prune.remove(module, pname)
    return model


def baked_copy(model: nn.Module) -> nn.Module:
    """A copy with masks made permanent; `model` keeps its masks."""
    # A masked module holds its weight as a computed (non-leaf) tensor, which deepcopy refuses;
    # hand deepcopy detached stand-ins, which bake() recomputes from weight_orig * mask anyway.
    memo = {id(t): t.detach().clone() for _, m, p in masked_modules(model) if (t := getattr(m, p)) is not None}
    return bake(copy.deepcopy(model, memo))
