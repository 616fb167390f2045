"""torch-pruning helped through torchvision families it cannot trace alone (issue 11); used by `surgery.trace`.

- **ShuffleNetV2.** Its channel shuffle is a view/transpose/view, which torch-pruning reads as a flatten (and
  divides by zero on); its blocks split their input with `chunk(2)`, which after pruning would split in the
  wrong place. `prepare` gives each block a `ChannelShuffle` module (the same permutation, as an index
  buffer) and a split at the width its branch reads; computation is unchanged, bit for bit. torch-pruning is
  given a handler for `ChannelShuffle` and, per shuffle, the two dependencies that tie an input channel to
  the output position it moves to (`couple`), so a channel is followed through every shuffle and removed
  wherever it goes.
- **Swin and MaxViT.** Their window attention is traced as one node whose channels stay (`WholePruner`,
  refused in `surgery`): its window partition reads to torch-pruning as flattens whose index maps grow past
  10 GB, and its heads are cut from its input width. MaxViT's partition and axis-swap modules, which move
  axes and keep channels, are traced as nodes that pass a channel through (`PassPruner`). Their MLPs and
  convolutions' inner channels prune as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import Dependency

from .errors import UnsupportedModelError


class ChannelShuffle(nn.Module):
    """Output channel j is input channel `index[j]`: torchvision's `channel_shuffle(x, groups)` as a
    permutation that pruning can narrow (`ShufflePruner`)."""

    WIDTH_ATTRS = ("in_channels",)  # what export.save_model records, as for a conv's widths

    def __init__(self, channels: int, groups: int):
        super().__init__()
        j = torch.arange(channels)
        per_group = channels // groups
        self.register_buffer("index", (j % groups) * per_group + j // groups)
        self.in_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.index.numel()}"


class ShufflePruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's handler for `ChannelShuffle`. In one group both are called, with the same channels in
    input and output coordinates (`couple`); either order leaves `index` pointing at the kept inputs."""

    def prune_out_channels(self, layer: ChannelShuffle, idxs: Sequence[int]) -> nn.Module:
        gone = set(idxs)
        layer.index = layer.index[[j for j in range(layer.index.numel()) if j not in gone]]
        return layer

    def prune_in_channels(self, layer: ChannelShuffle, idxs: Sequence[int]) -> nn.Module:
        gone = torch.as_tensor(sorted(set(idxs)), dtype=torch.long, device=layer.index.device)
        moved = layer.index - torch.searchsorted(gone, layer.index)  # each kept input moves down past the gone
        layer.index = torch.where(torch.isin(layer.index, gone), -1, moved)  # -1: a position prune_out removes
        layer.in_channels -= len(gone)
        return layer

    def get_out_channels(self, layer: ChannelShuffle) -> int:
        return layer.index.numel()

    def get_in_channels(self, layer: ChannelShuffle) -> int:
        return layer.in_channels


class WholePruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's handler for a module traced as one node whose channels stay (an attention of `whole_types`):
    `surgery` refuses the groups through it before pruning, so the prune functions are never called."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise UnsupportedModelError(f"the channels of {type(layer).__name__} cannot be removed")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise UnsupportedModelError(f"the input channels of {type(layer).__name__} cannot be removed")

    def get_out_channels(self, layer: nn.Module) -> int:
        return getattr(layer, _PROJECTIONS[type(layer).__name__][1]).out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return getattr(layer, _PROJECTIONS[type(layer).__name__][0]).in_features


class PassPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's handler for a module that moves a tensor's axes and keeps its channels as they are
    (MaxViT's window partition and axis swaps): a channel in is the same channel out; nothing to narrow."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels  # torch-pruning's sign that input and output channels are one

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None


# An attention traced whole: (its input projection, its output projection).
_PROJECTIONS = {"ShiftedWindowAttention": ("qkv", "proj"), "ShiftedWindowAttentionV2": ("qkv", "proj"),
                "RelativePositionalMultiHeadAttention": ("to_qkv", "merge")}


SHUFFLE, WHOLE, PASS = ShufflePruner(), WholePruner(), PassPruner()


def whole_types() -> tuple[type, ...]:
    """The module types traced as one node whose channels stay: torchvision's Swin and MaxViT attention."""
    swin = sys.modules.get("torchvision.models.swin_transformer")  # imported wherever such a model exists
    maxvit = sys.modules.get("torchvision.models.maxvit")
    return ((() if swin is None else (swin.ShiftedWindowAttention, swin.ShiftedWindowAttentionV2))
            + (() if maxvit is None else (maxvit.RelativePositionalMultiHeadAttention,)))


def whole_item(group):
    """The first item of torch-pruning group `group` whose module is traced whole (`whole_types`), or None."""
    types = whole_types()
    return next((it for it in group if isinstance(it.dep.target.module, types)), None)


def _pass_types() -> tuple[type, ...]:
    maxvit = sys.modules.get("torchvision.models.maxvit")
    return () if maxvit is None else (maxvit.WindowPartition, maxvit.WindowDepartition, maxvit.SwapAxes)


def customized() -> dict:
    """torch-pruning's `customized_pruners` for `build_dependency`."""
    return {ChannelShuffle: SHUFFLE, **dict.fromkeys(whole_types(), WHOLE), **dict.fromkeys(_pass_types(), PASS)}


def whole_holder(model: nn.Module, name: str) -> str | None:
    """The module of `whole_types` that layer `name` belongs to, if any."""
    types, parts = whole_types(), name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        holder = ".".join(parts[:i])
        if types and isinstance(model.get_submodule(holder), types):
            return holder
    return None


def prepare(model: nn.Module) -> None:
    """Give torchvision's ShuffleNetV2 blocks a `ChannelShuffle` and a split at their branch's width (see the
    module docstring); anything else is left alone. Idempotent; what each block computes is unchanged."""
    shufflenet = sys.modules.get("torchvision.models.shufflenetv2")
    if shufflenet is None:
        return
    for block in model.modules():
        if type(block) is shufflenet.InvertedResidual:
            last = [m for m in block.branch2 if isinstance(m, nn.Conv2d)][-1]
            channels = last.out_channels * 2  # both halves are as wide as the branch's last conv
            block.shuffle = ChannelShuffle(channels, 2).to(last.weight.device)
            block.__class__ = __getattr__("ShuffleBlock")


def couple(dg: tp.DependencyGraph) -> None:
    """Tie each `ChannelShuffle`'s input channels to the output positions they move to, in both directions."""
    for module, node in dg.module2node.items():
        if isinstance(module, ChannelShuffle):
            for trigger, handler, forward in ((SHUFFLE.prune_in_channels, SHUFFLE.prune_out_channels, True),
                                              (SHUFFLE.prune_out_channels, SHUFFLE.prune_in_channels, False)):
                dep = Dependency(trigger=trigger, handler=handler, source=node, target=node)
                dep.index_mapping[0] = _Moved(module, forward)
                node.dependencies.append(dep)


class _Moved:
    """torch-pruning index mapping through a shuffle: input channels to the output positions holding them
    (`forward`), or back. Read from the shuffle's index when the group is traced."""

    def __init__(self, shuffle: ChannelShuffle, forward: bool):
        self.shuffle, self.forward = shuffle, forward

    def __call__(self, idxs):
        index = self.shuffle.index.tolist()
        where = {v: j for j, v in enumerate(index)} if self.forward else dict(enumerate(index))
        return [_helpers._HybridIndex(idx=where[i.idx], root_idx=i.root_idx) for i in idxs if i.idx in where]


def _block_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.stride == 1:
        reads = self.branch2[0].in_channels
        x1, x2 = x.split([x.shape[1] - reads, reads], dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
    else:
        out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
    return self.shuffle(out)


def __getattr__(name: str):
    """`ShuffleBlock`: torchvision's ShuffleNetV2 block with its shuffle and split prunable, made on first use
    (torchvision is imported only where such a model exists) and kept here, where pickle finds it."""
    if name != "ShuffleBlock":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if (cls := globals().get(name)) is not None:
        return cls
    from torchvision.models.shufflenetv2 import InvertedResidual

    cls = type("ShuffleBlock", (InvertedResidual,), {
        "forward": _block_forward, "__module__": __name__, "__doc__": "A ShuffleNetV2 block, prunable (prepare)"})
    globals()["ShuffleBlock"] = cls
    return cls
