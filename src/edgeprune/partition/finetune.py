"""What the transfer layer costs in accuracy, and how much a short fine-tune of the edge part wins back.

ScissionLite prepares "pre-trained slices that include the TL" [papers.md §5]; here the device part stays frozen
(it is what is deployed on the device) and only the edge part, behind the nearest up-sampling, is fine-tuned. The
device part's pooled outputs are computed once, in eval mode, so the fine-tune costs only the edge part's passes.

Works at the PyTorch level on models whose layers form a chain: an `nn.Sequential`, or an in-house VGG
(`features` + global pool + linear).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..errors import UnsupportedModelError
from ..models.layers import PooledClassifier
from ..progress import Reporter
from ..train import TrainConfig, evaluate, fit
from . import transfer


def chain(model: nn.Module) -> list[nn.Module]:
    """The model's layers in order, such that applying them one after the other is the model's forward."""
    if isinstance(model, nn.Sequential):
        return list(model)
    if isinstance(model, PooledClassifier) and isinstance(model.features, nn.Sequential):
        return [*model.features, model.pool, nn.Flatten(1), model.fc]
    raise UnsupportedModelError(f"{type(model).__name__} is not a chain of layers; the transfer-layer fine-tune "
                                "needs an nn.Sequential or an in-house VGG (vgg11/13/16/19)")


def cuts(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """(k, per-sample shape) for every position after layer k-1 where the transfer layer fits (transfer.eligible)."""
    layers = chain(model)
    out = []
    x = torch.zeros(1, *input_shape)
    with torch.no_grad():
        was = model.training
        model.eval()
        for k, layer in enumerate(layers[:-1], 1):
            x = layer(x)
            if transfer.eligible(tuple(x.shape[1:])):
                out.append((k, tuple(x.shape[1:])))
        model.train(was)
    return out


def finetune_cut(
    model: nn.Module, k: int, train: Iterable, test: Iterable, cfg: TrainConfig, progress: Reporter | None = None,
) -> dict:
    """Accuracy on `test` with the transfer layer after layer k-1, before and after fine-tuning the layers after it
    (on `train`, `cfg`); `model` is left as it was."""
    layers = chain(copy.deepcopy(model))
    device = nn.Sequential(*layers[:k], nn.MaxPool2d(2)).eval()
    edge = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *layers[k:])
    for p in device.parameters():
        p.requires_grad_(False)
    acts, labels = [], []
    with torch.no_grad():
        for x, y in train:
            acts.append(device(x))
            labels.append(y)
    batch = len(labels[0])
    sent = DataLoader(TensorDataset(torch.cat(acts), torch.cat(labels)), batch, shuffle=True,
                      generator=torch.Generator().manual_seed(cfg.seed))
    split = nn.Sequential(device, edge)
    before = evaluate(split, test)["accuracy"]
    fit(edge, sent, cfg, progress=progress)
    after = evaluate(split, test)["accuracy"]
    return {"cut": k, "after_layer": type(layers[k - 1]).__name__, "shape": list(acts[0].shape[1:]),
            "accuracy_before": before, "accuracy_after": after,
            "edge_params": sum(p.numel() for p in edge.parameters())}
