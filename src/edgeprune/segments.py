"""Where an exported model may be cut, and its blocks as ONNX models of their own.

A cut is a position in the graph's topological order where exactly one activation crosses: everything before it
needs nothing from after it, and everything after it needs nothing from before it but that one tensor. This is
Scission's open-branch counter (a residual block's skip keeps two tensors open, so no cut lies inside it), counted
on tensors rather than on Keras layers. Constants (initializers, and what is computed from them alone) do not
count: every extracted block carries the ones it uses.

Block i runs from cut i-1 (or the model's input) to cut i (or the model's output); blocks are extracted with
`onnx.utils.Extractor`, the engine of `onnx.utils.extract_model`, from one loaded copy of the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import helper

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Cut:
    """A valid cut: after node `position` (topological order), only `tensor`, made by node `node`, crosses."""

    position: int
    tensor: str
    node: str
    op: str
    shape: tuple[int, ...]  # at batch 1
    itemsize: int

    @property
    def bytes(self) -> int:
        """What crossing this cut sends per sample, uncompressed."""
        return int(np.prod(self.shape)) * self.itemsize


class Segments:
    """An ONNX classifier with one input and one output, its valid cuts, and its blocks (`len(cuts) + 1`)."""

    def __init__(self, model: onnx.ModelProto, cuts: list[Cut], input_shape: tuple[int, ...], name: str):
        self.model, self.cuts, self.input_shape, self.name = model, cuts, input_shape, name
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name
        self._extractor = onnx.utils.Extractor(model)

    @property
    def n_blocks(self) -> int:
        return len(self.cuts) + 1

    def boundary(self, i: int) -> str:
        """The tensor between block i-1 and block i: the model's input for i = 0, its output for i = n_blocks."""
        if i == 0:
            return self.input
        return self.output if i == self.n_blocks else self.cuts[i - 1].tensor

    def span(self, first: int, stop: int) -> onnx.ModelProto:
        """Blocks first..stop-1 as one model (its input is `boundary(first)`, its output `boundary(stop)`)."""
        if not 0 <= first < stop <= self.n_blocks:
            raise ValueError(f"block span [{first}, {stop}) outside 0..{self.n_blocks}")
        return self._extractor.extract_model([self.boundary(first)], [self.boundary(stop)])

    def block(self, i: int) -> onnx.ModelProto:
        return self.span(i, i + 1)


def load(onnx_model: str | os.PathLike | bytes | onnx.ModelProto, name: str = "model") -> Segments:
    """The cuts and blocks of an exported model (a path, bytes or a ModelProto).

    Raises UnsupportedModelError for a model with several inputs or outputs or with no valid cut (naming the node
    whose output stays open across every position)."""
    model = _as_proto(onnx_model)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedModelError(
            f"{name} has {len(inputs)} inputs and {len(graph.output)} outputs; partitioning needs exactly one of each"
        )
    shape = tuple(d.dim_value for d in inputs[0].type.tensor_type.shape.dim)[1:]
    if not shape or any(v <= 0 for v in shape):
        raise UnsupportedModelError(f"{name}'s input {inputs[0].name!r} has no fixed per-sample shape; export it "
                                    "with a fixed input shape (only the batch dimension may vary)")
    positions = _single_crossings(graph, inits)
    if not positions:
        raise UnsupportedModelError(_no_cut_message(graph, inits, name))
    probed = _probe(model, [t for _, t in positions], shape)
    producer = {out: node for node in graph.node for out in node.output}
    cuts = [Cut(pos, t, producer[t].name or f"#{pos}", producer[t].op_type, probed[t].shape[1:], probed[t].itemsize)
            for pos, t in positions]
    _declare(model, probed)
    return Segments(model, cuts, shape, name)


def _as_proto(onnx_model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(onnx_model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(onnx_model)  # value_info is added below; the caller's copy stays as it was
        return out
    if isinstance(onnx_model, bytes):
        return onnx.load_from_string(onnx_model)
    return onnx.load(str(onnx_model))


def _constants(graph: onnx.GraphProto, inits: set[str]) -> set[str]:
    """Tensors computed from initializers alone (Constant nodes included): known before any input arrives."""
    const = set(inits)
    for node in graph.node:
        if all(i in const for i in node.input if i):
            const.update(node.output)
    return const


def _spans(graph: onnx.GraphProto, inits: set[str]) -> dict[str, tuple[int, int]]:
    """For each activation: (index of its producer, -1 for the input; index of its last consumer, len(nodes) for
    the output). It crosses every position p with first <= p < last."""
    const = _constants(graph, inits)
    n = len(graph.node)
    spans = {i.name: (-1, -1) for i in graph.input if i.name not in inits}
    for k, node in enumerate(graph.node):
        for out in node.output:
            if out and out not in const:
                spans[out] = (k, k)
        for name in node.input:
            if name in spans:
                spans[name] = (spans[name][0], k)
    for out in graph.output:
        if out.name in spans:
            spans[out.name] = (spans[out.name][0], n)
    return spans


def _single_crossings(graph: onnx.GraphProto, inits: set[str]) -> list[tuple[int, str]]:
    """(position, tensor) for each position after a node where exactly one activation crosses; one per tensor
    (nodes that compute only constants can repeat a position), and neither the input nor the output itself."""
    spans = _spans(graph, inits)
    found: dict[str, int] = {}
    for p in range(len(graph.node) - 1):
        crossing = [t for t, (first, last) in spans.items() if first <= p < last]
        if len(crossing) == 1 and spans[crossing[0]][0] >= 0 and spans[crossing[0]][1] < len(graph.node):
            found.setdefault(crossing[0], p)
    return [(p, t) for t, p in found.items()]


def _no_cut_message(graph: onnx.GraphProto, inits: set[str], name: str) -> str:
    n = len(graph.node)
    if n < 2:
        return f"{name} has {n} node(s): there is nothing to cut between; partition a model with several layers"
    spans = _spans(graph, inits)
    nodes = graph.node
    # The activation that stays open longest, past the input, is what keeps every position from being a cut.
    t, (first, last) = max(((t, s) for t, s in spans.items() if s[0] >= 0), key=lambda ts: ts[1][1] - ts[1][0])
    closer = nodes[last].name or f"#{last}" if last < n else "the model's output"
    return (f"{name} has no valid cut: at every position at least two activations cross; '{t}' from node "
            f"'{nodes[first].name or first}' ({nodes[first].op_type}) stays open until {closer!r}. "
            "Partition a model whose layers form a chain between branches (e.g. VGG, ResNet, MobileNet)")


def _probe(model: onnx.ModelProto, tensors: Sequence[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Run the model once at batch 1 with `tensors` as extra outputs: their exact shapes and dtypes, which shape
    inference cannot always give (shapes computed at run time)."""
    from .export import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors if t not in have)
    sess = ort_session(probe.SerializeToString())
    x = np.zeros((1, *shape), dtype=_input_dtype(model))
    outs = sess.run(list(tensors), {model.graph.input[0].name: x})
    return dict(zip(tensors, outs, strict=True))


def _input_dtype(model: onnx.ModelProto) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)


def _declare(model: onnx.ModelProto, probed: dict[str, np.ndarray]) -> None:
    """Give each cut tensor a value_info (batch left symbolic), which block extraction needs for its new inputs."""
    keep = [v for v in model.graph.value_info if v.name not in probed]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for t, a in probed.items():
        elem = helper.np_dtype_to_tensor_dtype(a.dtype)
        model.graph.value_info.append(helper.make_tensor_value_info(t, elem, ["batch", *a.shape[1:]]))


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write a block (or any model under 2 GB) atomically."""
    from .runs import atomic_write

    data = model.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))
