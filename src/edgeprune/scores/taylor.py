"""First-order Taylor criteria of output channels, as torch-pruning group importances.

Molchanov et al. (ICLR 2017), "Pruning Convolutional Neural Networks for Resource Efficient Inference": the
loss change from removing feature map z of a layer is estimated by Θ(z) = |1/M Σ_m z_m · ∂L/∂z_m| (M the
positions of the map), computed for each example and averaged over the examples, then L2-normalised per
layer so that layers rank against each other. Here the feature map is the output of each conv/linear layer
(as in the reference implementations, which hook the conv outputs), collected by forward hooks on `batches`;
`ActivationTaylorImportance` turns those per-layer scores into torch-pruning's group importance (mean over
the group's coupled layers), so `structure.global_keep` ranks coupled channels once.

The weight variant is torch-pruning's own `TaylorImportance` (Σ |w · ∂L/∂w| per channel, Molchanov et al.
2019) on the gradients `weight_gradients` accumulates.

These score channels, not weights: they are not criteria of the per-weight registry (pruning at
initialisation would have nothing to read from them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.pruner import function

from ..measure import PRUNABLE

IMPORTANCES = ("activation", "weight")
COSTS = ("none", "macs")
_OUT = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_IN = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def activation_taylor(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_batches: int,
                      device: str | torch.device = "cpu") -> dict[nn.Module, Tensor]:
    """Θ of every output channel of every conv/linear layer, L2-normalised per layer, over the first
    `num_batches` of `batches` (the model in eval mode: BN statistics are neither used from nor written to
    the batch; its parameters' .grad and training flag are left as they were)."""
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    sums = {m: torch.zeros(m.out_features if isinstance(m, nn.Linear) else m.out_channels, dtype=torch.float64,
                           device=device) for m in layers}
    seen, outputs = 0, []

    def keep(module: nn.Module, _inputs, output: Tensor) -> None:
        outputs.append((module, output))

    hooks = [m.register_forward_hook(keep) for m in layers]
    was_training = model.training
    model.eval()
    try:
        for x, y in itertools.islice(batches, num_batches):
            x, y = x.to(device), y.to(device)
            outputs.clear()
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [out for _, out in outputs])
            for (module, out), grad in zip(outputs, grads, strict=True):
                # per example: |mean over positions of z·∂L/∂z|; summed here, divided by the examples below
                per_example = (out.detach() * grad).flatten(2).mean(2) if out.dim() > 2 else out.detach() * grad
                sums[module] += per_example.abs().sum(0).double()
            seen += len(y)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {m: (s / max(seen, 1)) / (s / max(seen, 1)).norm().clamp_min(1e-30) for m, s in sums.items()}


class ActivationTaylorImportance(tp.importance.GroupMagnitudeImportance):
    """torch-pruning's group importance from `activation_taylor`'s per-layer scores: each coupled conv/linear
    layer's score of the channel, averaged over the group (torch-pruning's own "mean" reduction)."""

    def __init__(self, scores: dict[nn.Module, Tensor]):
        super().__init__(group_reduction="mean", normalizer=None)
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group) -> Tensor | None:
        imps, roots = [], []
        for item in group:
            layer, idxs = item.dep.target.module, list(item.idxs)
            if item.dep.handler in _OUT and layer in self.scores:
                imps.append(self.scores[layer][idxs].float())
                roots.append(item.root_idxs)
        return self._reduce(imps, roots) if imps else None


class PerMacImportance(tp.importance.Importance):
    """Another group importance divided by the MACs one channel of the group costs: its own conv/linear
    layers' work per output channel plus the consumers' work per input channel (`layer_macs`: MACs of one
    sample per layer). Ranked across the model, the channels that buy the least importance per MAC go first,
    so a budget of parameters removes more of the work (Molchanov et al. 2017 subtract a FLOPs term instead;
    a ratio needs no weight to tune)."""

    def __init__(self, inner: tp.importance.Importance, layer_macs: dict[nn.Module, int]):
        self.inner, self.macs = inner, layer_macs

    @torch.no_grad()
    def __call__(self, group) -> Tensor | None:
        imp = self.inner(group)
        if imp is None:
            return None
        cost = torch.zeros(len(imp), dtype=torch.float64)
        for item in group:
            layer, handler = item.dep.target.module, item.dep.handler
            if layer not in self.macs or handler not in (*_OUT, *_IN):
                continue
            if isinstance(layer, nn.Linear):
                n = layer.out_features if handler in _OUT else layer.in_features
            else:
                n = layer.out_channels if handler in _OUT else layer.in_channels
            # a flattened channel feeds the linear layer several inputs: each idx adds its share
            cost.index_add_(0, torch.as_tensor(item.root_idxs), torch.full((len(item.root_idxs),),
                                                                           self.macs[layer] / n, dtype=torch.float64))
        return imp.double().cpu() / cost.clamp_min(1.0)


def weight_gradients(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_batches: int,
                     device: str | torch.device = "cpu") -> None:
    """Fill every parameter's .grad with the loss gradient summed over the first `num_batches` of `batches`
    (eval mode), what torch-pruning's `TaylorImportance` reads."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for x, y in itertools.islice(batches, num_batches):
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    finally:
        model.train(was_training)


def importance(kind: str, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_batches: int,
               device: str | torch.device = "cpu", cost: str = "none",
               input_shape: tuple[int, ...] | None = None) -> tp.importance.Importance:
    """The group importance of `kind` ("activation" or "weight") for `model` as it is now; with `cost` "macs",
    per MAC of the channel (PerMacImportance; needs `input_shape`)."""
    if kind == "activation":
        imp = ActivationTaylorImportance(activation_taylor(model, batches, num_batches, device))
    else:
        weight_gradients(model, batches, num_batches, device)
        imp = tp.importance.TaylorImportance()
    if cost == "none":
        return imp
    from ..measure import layer_macs

    by_name = layer_macs(model, input_shape)
    return PerMacImportance(imp, {m: by_name[n] for n, m in model.named_modules() if n in by_name})
