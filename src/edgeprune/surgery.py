"""Surgery: make a model physically smaller by removing output channels, on torch-pruning's DependencyGraph.

torch-pruning finds everything coupled to a channel (its BN, the consumers' input channels, residual-add
partners, concatenation slices, depthwise convs, norms, attention) and removes it everywhere at once. On
top of that this module turns per-layer decisions into group decisions:

- a channel of a coupled group goes only if every coupled layer with a say lets it go (a layer without a
  decision keeps all; a depthwise conv without one follows its input). On residual networks this keeps far
  more than each layer asked for: a stage's convs must all agree on a channel. To remove a fraction of every
  group, rank each group once (`structure.group_keep`, torch-pruning's group importance) and pass that;
- the model's outputs never change; grouped convs lose the same positions in every group; GroupNorm
  groups and attention heads each lose the same number of channels, so every group and head stays whole;
- the result is checked, in one pass, against the unpruned model with the removed channels' consumers
  zeroed (the inputs they read set to nothing). Channel-count-dependent statistics (LayerNorm and GroupNorm
  mean and variance, the attention scale 1/sqrt(head dim)) are those of that reference in both runs: they
  are what removing channels redefines, everything else (every kept weight and where it sits) is checked.
  Where the check fails, the groups are redone one by one and a group torch-pruning mapped wrongly is left
  unpruned and reported in `SurgeryReport.skipped`, so no wrong model is returned;
- the trace runs the model in training mode with its norm and dropout layers in eval mode, so branches
  taken only in training (auxiliary classifiers) are in the graph and stay consistent with the trunk.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from . import masks as masks_mod
from . import zoo_ops
from .errors import ConfigError, UnsupportedModelError, unknown_name
from .measure import PRUNABLE

# Layers that pass a channel on without mixing it with others. A constant cannot be folded through anything
# else (structure.remove_dead); a failed check names the others in the group (attention, pooling over channels).
CHANNELWISE = {
    OPTYPE.CONV, OPTYPE.LINEAR, OPTYPE.BN, OPTYPE.DEPTHWISE_CONV, OPTYPE.ELEMENTWISE, OPTYPE.CONCAT,
    OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.SLICE, OPTYPE.PRELU, OPTYPE.IN, OPTYPE.UNBIND, OPTYPE.EXPAND,
}
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)  # never reported as an unsupported model
TOLERANCE = 1e-4  # of the largest output magnitude: float32 sums in another order, nothing more


@dataclass
class SurgeryReport:
    """What `materialize` did. Layer names are those of `model.named_modules()`."""

    before: dict[str, int] = field(default_factory=dict)  # output channels before, decided or changed layers
    after: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)  # original indices each changed layer kept
    skipped: dict[str, str] = field(default_factory=dict)  # why a decision was not applied in full
    channels_asked: int = 0  # output channels the decisions remove, summed over the decided layers
    channels_removed: int = 0  # of those, the ones removed (the rest: see skipped)
    params_before: int = 0
    params_after: int = 0
    unreached: list[str] = field(default_factory=list)  # conv/linear layers the traced forward never runs
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the masks, narrowed (see materialize)

    def to_dict(self) -> dict:
        """The record, without the mask tensors."""
        return {k: v for k, v in asdict(self).items() if k != "masks"}


def width(layer: nn.Module) -> int:
    """Output channels of a conv or linear layer."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of `model`, traced with training-only branches (see `trace`)."""
    return trace(model, example_inputs)[0]


@dataclass(eq=False)
class Traced:
    """A trace (`trace`) with what the model and input were when it was made (`_signature`)."""

    dg: tp.DependencyGraph
    branch_error: Exception | None
    signature: tuple


class Decisions(dict):
    """Keep decisions, layer -> kept channel indices, with the trace they were made on (`structure.group_keep`,
    `global_keep`, `remove_dead`): `materialize` reuses it, once, where the model is the same modules and
    tensors of the same shapes since, instead of tracing again. A copy is a plain dict."""

    def __init__(self, *args, traced: Traced | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.traced = traced

    def __deepcopy__(self, memo: dict) -> dict:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self):
        return dict, (dict(self),)


def traced(model: nn.Module, example_inputs: torch.Tensor) -> Traced:
    """`trace`, kept with the model's signature for `Decisions`."""
    dg, branch_error = trace(model, example_inputs)
    return Traced(dg, branch_error, _signature(model, example_inputs))


def _signature(model: nn.Module, x: torch.Tensor) -> tuple:
    """What a trace depends on: the model's modules and tensors (identity, type, shape; not values) and the
    input's shape. torch-pruning replaces every tensor it narrows, so a pruned model never matches. (A trace
    holds its modules, so their ids stay unique while it lives.)"""
    return (tuple((id(m), type(m)) for m in model.modules()),
            tuple((id(t), tuple(t.shape)) for m in model.modules()
                  for t in (*m._parameters.values(), *m._buffers.values()) if t is not None),
            tuple(x.shape), x.dtype, str(x.device))


def trace(model: nn.Module, example_inputs: torch.Tensor) -> tuple[tp.DependencyGraph, Exception | None]:
    """(torch-pruning's DependencyGraph of `model`, why branch mode failed or None where it was used).

    Branch mode (`branch_mode`) reaches layers only a training forward uses, such as auxiliary
    classifiers; a model whose training forward cannot run on `example_inputs` alone (inception_v3's
    auxiliary head at 224 px) is traced in eval mode. Raises UnsupportedModelError where torch-pruning
    cannot trace it.
    """
    error = None
    zoo_ops.prepare(model)  # ShuffleNetV2's shuffles and splits made prunable; what the model computes is unchanged
    for branches in (True, False):
        try:
            with branch_mode(model, False), torch.enable_grad():  # restores the training flags afterwards

                def forward(m: nn.Module, x: torch.Tensor, branches: bool = branches):  # after tp's model.eval()
                    with branch_mode(m, branches):
                        return m(x)  # not m(*x), torch-pruning's default, which unbatches a one-sample tensor

                dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, forward_fn=forward, verbose=False,
                    customized_pruners=zoo_ops.customized(),
                )
                zoo_ops.couple(dg)
            return dg, error
        except OUT_OF_MEMORY:
            raise
        except Exception as e:
            error = e
    where = _torch_pruning_function(error)
    hint = " (a view/reshape that moves channels, such as a channel shuffle)" if "reshape" in where else ""
    raise UnsupportedModelError(
        f"torch-pruning cannot trace {type(model).__name__}: {type(error).__name__} in {where or 'the forward'}"
        f"{hint}: {_short(error)}. Channel surgery needs a model torch-pruning can trace; remove or replace "
        "that operation"
    ) from error


@contextmanager
def branch_mode(model: nn.Module, branches: bool = True) -> Iterator[nn.Module]:
    """The model in eval mode, or with `branches` its containers in training mode and its leaf layers
    (norms, dropout, stochastic depth) and attention in eval mode: a training forward's branches
    (auxiliary heads), deterministically. Training flags are restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    if branches:
        for m in model.modules():
            if next(m.children(), None) is not None and not isinstance(m, nn.MultiheadAttention):
                m.training = True
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


@contextmanager
def mapped_once(dg: tp.DependencyGraph) -> Iterator[None]:
    """Groups traced from `dg` without torch-pruning recomputing every concatenation's and split's index map for
    each one: `get_pruning_group` does, from the model's current widths, although `build_dependency` already
    did (45 % of planning time on densenet121). Only while the model's widths stay as traced: for planning,
    never around pruning. Other graphs are mapped as usual."""
    maps = tp.dependency.index_mapping
    original = maps.update_index_mapping

    def update(graph: tp.DependencyGraph) -> None:
        if graph is not dg:
            original(graph)

    maps.update_index_mapping = update
    try:
        yield
    finally:
        maps.update_index_mapping = original


def out_channel_group(dg: tp.DependencyGraph, layer: nn.Module, idxs: Iterable[int], name: str):
    """torch-pruning's group for removing output channels `idxs` of `layer` (named `name` in errors)."""
    try:
        return dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, list(idxs))
    except OUT_OF_MEMORY:
        raise
    except Exception as e:
        raise UnsupportedModelError(
            f"torch-pruning cannot prune the output channels of layer {name!r} ({type(layer).__name__}): "
            f"{type(e).__name__}: {_short(e)}. Leave that layer out of the decisions"
        ) from e


def materialize(
    model: nn.Module,
    keep: Mapping[str, Sequence[int] | torch.Tensor],
    example_inputs: torch.Tensor,
    round_to: int | None = None,
    ignored: Sequence[str] = (),
    strict: bool = False,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> SurgeryReport:
    """Remove every output channel not in `keep[layer]` (indices, or a bool mask) from `model`, in place.

    Masks are baked first, and `report.masks` hands them back narrowed as their weights were (torch-pruning's
    own handlers replayed on them), `{"<layer>.weight": mask}`, for the caller to re-apply where a layer
    stays unstructured; `masks` adds those of layers the caller baked already (`{layer name: mask}`).

    Layers in `ignored` and the layers producing the model's outputs keep all their output channels, and so does
    everything coupled to them. A channel tied to others (residual add, depthwise conv, ...) goes only if every
    coupled layer with a decision removes it: per-layer decisions on a residual network remove far less than each
    asked (see `structure.group_keep` for decisions made once per group, which land). `round_to` keeps extra
    channels (the lowest-index ones) so that each decided group keeps a multiple of it. Decisions that cannot be
    applied in full are explained in `report.skipped`, and `report.channels_asked` / `channels_removed` say how much
    of the request landed. Decided layers the traced forward never reaches and groups torch-pruning maps wrongly
    (the check fails) are left unpruned and reported, or with `strict` raise UnsupportedModelError naming the group.
    Raises UnsupportedModelError where torch-pruning cannot trace the model; on any error the model is left exactly
    as it was.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    decisions = {name: _kept_indices(model, layers, name, idxs) for name, idxs in keep.items()}
    for name in ignored:
        if name not in layers:
            raise _unknown_layer(model, layers, name)
    if round_to is not None:
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
        for name in decisions:
            if width(layers[name]) < round_to:
                raise ConfigError(
                    f"round_to={round_to} is larger than layer {name!r}, which has {width(layers[name])} "
                    "output channels; use a smaller round_to or leave that layer out"
                )
    widths = {n: width(m) for n, m in layers.items()}
    held = {name: m.weight_mask.detach().clone() for name, m, attr in masks_mod.masked_modules(model)
            if attr == "weight" and name in layers} | dict(masks or {})
    from .surgeon import Surgeon  # it uses this module's tracing

    snapshot = Snapshot(model)
    try:
        masks_mod.bake(model)  # torch-pruning replaces weights, which would orphan a prune reparametrisation
        params_before = _parameters(model)
        reuse = None
        if isinstance(keep, Decisions):  # used once: pruning changes torch-pruning's own records
            reuse, keep.traced = keep.traced, None
        if reuse is not None and reuse.signature == _signature(model, example_inputs):
            dg, branch_error = reuse.dg, reuse.branch_error
        else:
            dg, branch_error = trace(model, example_inputs)
        surgeon = Surgeon(model, dg, branch_error is None, layers, decisions, ignored, example_inputs, strict, held)
        with mapped_once(dg):  # planning prunes nothing
            for name in [n for n in layers if n in decisions]:  # model order, so reports read top-down
                surgeon.plan(name, round_to)
        surgeon.execute()
    except BaseException:
        snapshot.restore()
        raise
    report = SurgeryReport(skipped=surgeon.skipped, params_before=params_before, params_after=_parameters(model),
                           channels_asked=sum(widths[n] - len(kept) for n, kept in decisions.items()),
                           channels_removed=sum(widths[n] - len(surgeon.alive[n]) for n in decisions),
                           unreached=[n for n, m in layers.items() if m not in dg.module2node
                                      and zoo_ops.whole_holder(model, n) is None],
                           masks={f"{n}.weight": twin.weight.detach() for n, twin in surgeon.twins.items()})
    if branch_error is not None and report.unreached:
        warnings.warn(
            f"{len(report.unreached)} layer(s) are not on the traced forward ({_few(report.unreached)}): their "
            "inputs were not narrowed with their producers, so a forward that uses them will fail. The "
            f"training-mode forward (auxiliary heads) could not run on the example input: {_short(branch_error)}; "
            "pass an example input it accepts (inception_v3: 3x299x299) to prune those layers too",
            stacklevel=2)
    for name, alive in surgeon.alive.items():
        if name in decisions or len(alive) != widths[name]:
            report.before[name], report.after[name] = widths[name], len(alive)
            if len(alive) != widths[name]:
                report.kept[name] = list(alive)
    return report


class Snapshot:
    """Every module's attributes and every parameter's and buffer's data as they are now, to put back
    exactly: torch-pruning and `masks.bake` replace tensors and attributes rather than write into them."""

    def __init__(self, model: nn.Module):
        self.modules = [(m, type(m), {k: copy.copy(v) if isinstance(v, dict | set | list) else v
                                      for k, v in vars(m).items()}) for m in model.modules()]
        self.data = [(t, t.data) for m in model.modules()
                     for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]

    def restore(self) -> None:
        for m, cls, attrs in self.modules:
            m.__class__ = cls
            vars(m).clear()
            vars(m).update(attrs)
        for t, data in self.data:
            t.data = data


def _parameters(model: nn.Module) -> int:
    """Parameters of a model whose masks are baked (measure.count_params also counts non-zeros: a pass over
    every weight that surgery does not need)."""
    return sum(p.numel() for p in model.parameters())


def _kept_indices(model: nn.Module, layers: dict[str, nn.Module], name: str, idxs) -> frozenset[int]:
    if name not in layers:
        if name in dict(model.named_modules()):
            module = model.get_submodule(name)
            raise ConfigError(f"layer {name!r} is a {type(module).__name__}; keep decisions name conv or linear layers")
        raise _unknown_layer(model, layers, name)
    n = width(layers[name])
    t = torch.as_tensor(idxs)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ConfigError(f"keep mask for {name!r} has shape {tuple(t.shape)}; expected ({n},)")
        t = t.nonzero().flatten()
    if t.numel() and (t.is_floating_point() or t.dim() != 1 or t.min() < 0 or t.max() >= n):
        raise ConfigError(f"keep indices for {name!r} must be integers in [0, {n}), got {t.tolist()[:10]}")
    return frozenset(t.tolist())


def _unknown_layer(model: nn.Module, layers: dict[str, nn.Module], name: str) -> ConfigError:
    return unknown_name("layer", name, layers, hint=f"name conv/linear layers of {type(model).__name__} "
                        "as model.named_modules() does")


def _torch_pruning_function(e: Exception) -> str:
    """The innermost torch-pruning function an exception passed through, to name what it failed on."""
    where, tb = "", e.__traceback__
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            where = f"torch-pruning's {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return where


def _short(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line and cut short: torch-pruning's can print whole tensors."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " …"


def _few(names: Iterable[str], shown: int = 3) -> str:
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
