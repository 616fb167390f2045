"""Tracing for surgery: torch-pruning's DependencyGraph of a model (with its training-only branches), the trace
kept with what it was made on (`Traced`, `Decisions`), and the small helpers `surgery` (materialize) and `surgeon`
(its plan and check) both use. Both import this module; neither imports the other's internals."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from . import zoo_ops
from .errors import UnsupportedModelError

# Layers that pass a channel on without mixing it with others. A constant cannot be folded through anything
# else (dead.remove_dead); a failed check names the others in the group (attention, pooling over channels).
CHANNELWISE = {
    OPTYPE.CONV, OPTYPE.LINEAR, OPTYPE.BN, OPTYPE.DEPTHWISE_CONV, OPTYPE.ELEMENTWISE, OPTYPE.CONCAT,
    OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.SLICE, OPTYPE.PRELU, OPTYPE.IN, OPTYPE.UNBIND, OPTYPE.EXPAND,
}
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)  # never reported as an unsupported model
TOLERANCE = 1e-4  # of the largest output magnitude: float32 sums in another order, nothing more

def width(layer: nn.Module) -> int:
    """Output channels of a conv or linear layer."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of `model`, traced with training-only branches (see `trace`)."""
    return trace(model, example_inputs)[0]


@dataclass(eq=False)
class Traced:
    """A trace (`trace`) with what the model and input were when it was made (`signature`)."""

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
    return Traced(dg, branch_error, signature(model, example_inputs))


def signature(model: nn.Module, x: torch.Tensor) -> tuple:
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
    where = torch_pruning_function(error)
    hint = " (a view/reshape that moves channels, such as a channel shuffle)" if "reshape" in where else ""
    raise UnsupportedModelError(
        f"torch-pruning cannot trace {type(model).__name__}: {type(error).__name__} in {where or 'the forward'}"
        f"{hint}: {short_message(error)}. Channel surgery needs a model torch-pruning can trace; remove or replace "
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
            f"{type(e).__name__}: {short_message(e)}. Leave that layer out of the decisions"
        ) from e


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


def short_message(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line and cut short: torch-pruning's can print whole tensors."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " …"


def few_names(names: Iterable[str], shown: int = 3) -> str:
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def torch_pruning_function(e: Exception) -> str:
    """The innermost torch-pruning function an exception passed through, to name what it failed on."""
    where, tb = "", e.__traceback__
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            where = f"torch-pruning's {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return where
