"""Dead channels: DNNShifter's structural step (papers.md §2). Output channels whose weights are all zero are
removed physically. A dead channel still outputs a constant (its bias, or its BN's shift, through the
activation); unlike the DNNShifter repository, `remove_dead` folds that constant into the layers reading
it before the channel goes (papers.md §2, caveat [I]), so the smaller model computes what the sparse one did.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import masks as masks_mod
from .measure import PRUNABLE, effective_weights
from .reference import zero_inputs
from .surgery import Decisions, SurgeryReport, materialize
from .tracing import CHANNELWISE, branch_mode, mapped_once, out_channel_group, traced, width


@dataclass
class DeadLayer:
    before: int  # output channels
    after: int
    dead: int  # channels whose weights are all zero
    removed: int
    folded: int  # removed dead channels whose non-zero constant output was folded into their consumers


@dataclass
class DeadReport:
    layers: dict[str, DeadLayer]
    kept_dead: dict[str, str]  # layer -> why some of its dead channels stay (see also surgery.skipped)
    folded_into: dict[str, str]  # consumer layer -> where its folded constants went
    approximate: list[str]  # consumers whose fold is exact only away from zero-padded image borders
    max_abs_error: float  # largest output difference, masked model vs returned model, random inputs, eval mode
    surgery: SurgeryReport = field(default_factory=SurgeryReport)

    def to_dict(self) -> dict:
        """The record, without the surgery's mask tensors."""
        return {**{k: v for k, v in asdict(self).items() if k != "surgery"}, "surgery": self.surgery.to_dict()}


def dead_channels(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per conv/linear layer, a bool mask of the output channels whose weights (masks applied) are all zero."""
    return {
        name: (w.detach().flatten(1) == 0).all(1)
        for name, layer, w in effective_weights(model)
        if not getattr(layer, "transposed", False)  # a transposed conv keeps output channels on dim 1
    }


def remove_dead(
    model: nn.Module,
    example_inputs: torch.Tensor,
    fold_constants: bool = True,
    round_to: int | None = None,
) -> tuple[nn.Module, DeadReport]:
    """A new, physically smaller copy of `model` without its dead output channels (masks baked in; the surviving
    masks, narrowed, are in `report.surgery.masks`).

    With `fold_constants` (the default) a dead channel's constant output is folded into the layers that read
    it, and a dead channel whose value cannot be folded (it meets live values, e.g. in a residual add, or
    reaches something that is not a conv/linear layer) stays. Without it dead channels are dropped with
    their constants, as the DNNShifter repository does. `report.max_abs_error` measures the difference.
    """
    net = masks_mod.baked_copy(model).eval()
    dead = {name: mask for name, mask in dead_channels(net).items() if mask.any()}
    kept_dead, folded, folded_into, approximate, done = {}, {}, {}, [], None
    keep = {name: ~mask for name, mask in dead.items()}
    if fold_constants and dead:
        stay, folded, folded_into, approximate, done = _fold_constants(net, dead, example_inputs)
        for name, reasons in stay.items():
            keep[name][list(reasons)] = True
            by_reason = defaultdict(list)
            for channel, reason in sorted(reasons.items()):
                by_reason[reason].append(channel)
            kept_dead[name] = "; ".join(f"{len(chs)} dead channel(s) {chs[:8]} kept: {r}"
                                        for r, chs in by_reason.items())
    keep = Decisions({name: mask for name, mask in keep.items() if not mask.all()}, traced=done)
    held = {name: m.weight_mask.detach() for name, m, attr in masks_mod.masked_modules(model) if attr == "weight"}
    surgery = materialize(net, keep, example_inputs, round_to=round_to, masks=held)
    layers, order = {}, [n for n, _ in net.named_modules()]
    for name in sorted(set(dead) | set(surgery.after), key=order.index):
        before = surgery.before.get(name, width(net.get_submodule(name)))
        after = surgery.after.get(name, before)
        kept = set(surgery.kept.get(name, range(before)))
        removed_folded = sum(1 for c in folded.get(name, ()) if c not in kept)
        layers[name] = DeadLayer(before, after, int(dead[name].sum()) if name in dead else 0, before - after,
                                 removed_folded)
    error = _max_abs_error(model, net, example_inputs)
    net.train(model.training)
    return net, DeadReport(layers, kept_dead, folded_into, approximate, error, surgery)


def _fold_constants(net: nn.Module, dead: dict[str, torch.Tensor], example_inputs: torch.Tensor):
    """Fold the constants dead channels feed their consumers into the consumers' biases, in place.

    Returns (channels that must stay: layer -> {channel: reason}, folded channels per layer,
    where each consumer's constants went, consumers folded only approximately, the trace made here).
    """
    done = traced(net, example_inputs)  # folding changes values only: materialize reuses it
    dg, branches = done.dg, done.branch_error is None
    names = {m: n for n, m in net.named_modules()}
    dead = {name: mask for name, mask in dead.items() if net.get_submodule(name) in dg.module2node}  # see materialize
    reads: dict[tuple[str, int], list[tuple[nn.Module, int]]] = defaultdict(list)
    stay: dict[str, dict[int, str]] = defaultdict(dict)
    with mapped_once(dg):  # planning: nothing is pruned
        for name, mask in dead.items():
            layer = net.get_submodule(name)
            for it in out_channel_group(dg, layer, mask.nonzero().flatten().tolist(), name):
                node, module = it.dep.target, it.dep.target.module
                if isinstance(module, PRUNABLE) and not dg.is_out_channel_pruning_fn(it.dep.handler):
                    for col, channel in zip(it.idxs, it.root_idxs, strict=True):
                        reads[name, channel].append((module, col))
                elif not node.outputs or node.type not in CHANNELWISE:
                    what = names.get(module, "an operation")
                    reason = (f"it is part of the model's output (through {what})" if not node.outputs else
                              f"it reaches {what}, which mixes channels, so its constant cannot be folded")
                    for channel in it.root_idxs:
                        stay[name][channel] = reason

    # Observe what every consumer reads on random inputs: a dead channel reads the same for every input.
    seen = _consumer_inputs(net, {m for pairs in reads.values() for m, _ in pairs}, example_inputs, branches)
    folds: dict[nn.Module, dict[int, float]] = defaultdict(dict)
    folded: dict[str, set[int]] = defaultdict(set)
    approximate = set()
    for (name, channel), pairs in reads.items():
        constants = {}
        for module, col in pairs:
            if channel in stay[name]:
                break
            value, varies = _constant(seen[module], module, col)
            if value is None:
                stay[name][channel] = f"it meets live values (residual add, multiplication) before {names[module]}"
            elif value != 0 and not _foldable(module):
                stay[name][channel] = f"cannot fold its constant into {names[module]} ({type(module).__name__})"
            elif value != 0:
                constants[module, col] = value
                if varies:
                    approximate.add(names[module])
        if channel not in stay[name]:
            for (module, col), value in constants.items():
                folds[module][col] = value
            if constants:
                folded[name].add(channel)

    folded_into = {}
    with torch.no_grad():
        for module, columns in folds.items():
            cols, values = list(columns), torch.tensor(list(columns.values()), dtype=module.weight.dtype)
            delta = _constant_response(module, cols, values.to(module.weight.device))
            zero_inputs(module, cols)  # the constant now arrives through the bias; the channel feeds nothing
            folded_into[names[module]] = _add_to_bias(dg, module, delta, names)
            if _zero_padded(module):
                approximate.add(names[module])  # zero padding reads 0, not the constant, at the borders
    return {n: s for n, s in stay.items() if s}, dict(folded), folded_into, sorted(approximate), done


def _constant(inputs: torch.Tensor, module: nn.Module, col: int) -> tuple[float | None, bool]:
    """(the constant `module` reads on input `col`, None where it depends on the input; whether it varies
    over positions, as a constant that passed a zero-padded conv does at the image borders)."""
    v = inputs[..., col] if isinstance(module, nn.Linear) else inputs[:, col]
    if (v - v[:1]).abs().max() > 1e-6 * (1 + v[:1].abs().max()):
        return None, False
    return v[0].flatten().median().item(), bool(v[0].flatten().unique().numel() > 1)


def _zero_padded(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and module.padding not in ("valid", (0, 0))


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (type(module) is nn.Conv2d and not module.transposed)


def _constant_response(module: nn.Module, cols: list[int], values: torch.Tensor) -> torch.Tensor:
    """What constant inputs `values` on input channels `cols` add to each output, away from borders."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return w[:, cols] @ values
    # One receptive field without padding, the constant channels filled in: exactly the interior response.
    extent = [d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size, strict=True)]
    x = torch.zeros(1, module.in_channels, *extent, dtype=w.dtype, device=w.device)
    x[0, cols] = values.view(-1, 1, 1)
    return F.conv2d(x, w, None, 1, 0, module.dilation, module.groups).flatten()


def _add_to_bias(dg, module: nn.Module, delta: torch.Tensor, names: dict) -> str:
    """Add `delta` to what `module` outputs; say where it went."""
    if module.bias is not None:
        module.bias += delta
        return "bias"
    node = dg.module2node[module]
    follower = node.outputs[0].module if len(node.outputs) == 1 else None
    if isinstance(follower, nn.modules.batchnorm._BatchNorm) and follower.running_mean is not None:
        # BN(y + d) with running statistics is BN(y) with its mean lowered by d; this keeps the layer
        # bias-free, so the architecture spec (and export.load_model) still rebuilds it.
        follower.running_mean -= delta
        return f"running mean of {names[follower]}"
    module.bias = nn.Parameter(delta.clone())
    return "new bias (the architecture spec has none: export.load_model cannot rebuild this layer)"


def _probe(example_inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """A few random inputs shaped like `example_inputs`, the same on every call with the same seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((4, *example_inputs.shape[1:]), generator=g).to(example_inputs)


def _consumer_inputs(net: nn.Module, consumers: set[nn.Module], example_inputs: torch.Tensor, branches: bool) -> dict:
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].detach())) for m in consumers]
    try:
        with torch.no_grad(), branch_mode(net, branches):  # the traced branches: auxiliary heads read channels too
            net(_probe(example_inputs, seed=0))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _max_abs_error(model: nn.Module, net: nn.Module, example_inputs: torch.Tensor) -> float:
    x = _probe(example_inputs, seed=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float((model(x) - net.eval()(x)).abs().max())
    finally:
        model.train(was_training)

