"""Where an exported model may be cut, and its blocks as ONNX models of their own.

A cut is a position in the graph's topological order: everything before it needs nothing from after it, and
everything after it needs nothing from before it but the activations that cross it (made at or before the position,
used after it). By default (`max_tensors=1`) only positions where exactly one activation crosses are cuts: this is
Scission's open-branch counter (a residual block's skip keeps two tensors open, so no cut lies inside it), counted
on tensors rather than on Keras layers. With `max_tensors=k > 1` every topological-prefix boundary where at most k
activations cross is a cut too (one per distinct set of crossing tensors), so a branchy model (Inception, DenseNet,
an FPN) gets cut points inside its branches; the tensors crossing are sent together. Which sets are prefixes depends
on the topological order, so first, as DADS does, the minimum cut by bytes of each stretch between two single-tensor
cuts is found (a minimum s-t cut of the stretch's graph weighted by tensor bytes, edges back at infinite capacity so
that the head is closed under predecessors; networkx) and the stretch reordered to put that head first: the
cheapest place to cut inside every branchy stretch is then one of the prefix boundaries. Constants (initializers, and
what is computed from them alone) do not count: every extracted block carries the ones it uses. A tensor made
before cut i and used after cut i+1 crosses both, and block i passes it through (an output that is also an input).

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
    """A valid cut: after node `position` (topological order), only `tensors`, made by `nodes`, cross (in the
    graph's order of their producers). `tensor`, `node`, `op`, `shape` and `itemsize` name the one tensor of a
    single-tensor cut; for several, the names are joined with '+' and `shape` is refused (use `shapes`)."""

    position: int
    tensors: tuple[str, ...]
    nodes: tuple[str, ...]
    ops: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # at batch 1
    itemsizes: tuple[int, ...]

    @property
    def single(self) -> bool:
        return len(self.tensors) == 1

    @property
    def tensor(self) -> str:
        return "+".join(self.tensors)

    @property
    def node(self) -> str:
        return "+".join(self.nodes)

    @property
    def op(self) -> str:
        return "+".join(self.ops)

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.single:
            raise ValueError(f"cut {self.tensor!r} sends {len(self.tensors)} tensors; it has `shapes`, not one shape")
        return self.shapes[0]

    @property
    def itemsize(self) -> int:
        return self.itemsizes[0]

    @property
    def bytes(self) -> int:
        """What crossing this cut sends per sample, uncompressed (all its tensors)."""
        return sum(int(np.prod(s)) * k for s, k in zip(self.shapes, self.itemsizes, strict=True))


class Segments:
    """An ONNX classifier with one input and one output, its valid cuts, and its blocks (`len(cuts) + 1`)."""

    def __init__(self, model: onnx.ModelProto, cuts: list[Cut], input_shape: tuple[int, ...], name: str,
                 max_tensors: int = 1):
        self.model, self.cuts, self.input_shape, self.name = model, cuts, input_shape, name
        self.max_tensors = max_tensors
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name
        self._extractor = onnx.utils.Extractor(model)

    @property
    def n_blocks(self) -> int:
        return len(self.cuts) + 1

    def boundaries(self, i: int) -> tuple[str, ...]:
        """The tensors between block i-1 and block i: the model's input for i = 0, its output for i = n_blocks."""
        if i == 0:
            return (self.input,)
        return (self.output,) if i == self.n_blocks else self.cuts[i - 1].tensors

    def boundary(self, i: int) -> str:
        """The one tensor between block i-1 and block i (refused at a multi-tensor cut: use `boundaries`)."""
        names = self.boundaries(i)
        if len(names) != 1:
            raise ValueError(f"cut {i} sends {len(names)} tensors ({'+'.join(names)}); use boundaries({i})")
        return names[0]

    def span(self, first: int, stop: int) -> onnx.ModelProto:
        """Blocks first..stop-1 as one model (its inputs are `boundaries(first)`, its outputs `boundaries(stop)`, in
        that order; a tensor in both is passed through)."""
        if not 0 <= first < stop <= self.n_blocks:
            raise ValueError(f"block span [{first}, {stop}) outside 0..{self.n_blocks}")
        return self._extractor.extract_model(list(self.boundaries(first)), list(self.boundaries(stop)))

    def block(self, i: int) -> onnx.ModelProto:
        return self.span(i, i + 1)


def load(onnx_model: str | os.PathLike | bytes | onnx.ModelProto, name: str = "model",
         max_tensors: int = 1) -> Segments:
    """The cuts and blocks of an exported model (a path, bytes or a ModelProto): positions where at most
    `max_tensors` activations cross (see module docstring).

    Raises UnsupportedModelError for a model with several inputs or outputs or with no valid cut (naming the node
    whose output stays open across every position)."""
    if max_tensors < 1:
        raise ValueError(f"max_tensors must be >= 1, got {max_tensors}")
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
    probed: dict[str, np.ndarray] = {}
    if max_tensors > 1:
        probed = _probe(model, [t for t, (first, _) in _spans(graph, inits).items() if first >= 0], shape)
        _min_cut_order(graph, inits, {t: a.nbytes for t, a in probed.items()})
    positions = _crossings(graph, inits, max_tensors)
    if not positions:
        raise UnsupportedModelError(_no_cut_message(graph, inits, name, max_tensors))
    needed = list(dict.fromkeys(t for _, ts in positions for t in ts))
    probed = {t: probed[t] for t in needed} if probed else _probe(model, needed, shape)
    producer = {out: (k, node) for k, node in enumerate(graph.node) for out in node.output}
    cuts = []
    for pos, ts in positions:
        ts = tuple(sorted(ts, key=lambda t: (producer[t][0], t)))
        cuts.append(Cut(pos, ts, tuple(producer[t][1].name or f"#{producer[t][0]}" for t in ts),
                        tuple(producer[t][1].op_type for t in ts), tuple(probed[t].shape[1:] for t in ts),
                        tuple(probed[t].itemsize for t in ts)))
    _declare(model, probed)
    return Segments(model, cuts, shape, name, max_tensors)


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


def _crossings(graph: onnx.GraphProto, inits: set[str], max_tensors: int) -> list[tuple[int, frozenset[str]]]:
    """(position, tensors) for each position after a node where 1..max_tensors activations cross, none of them the
    model's input or output; one per distinct set (nodes that compute only constants repeat a set). Open tensors
    are tracked in one pass over the nodes."""
    spans = _spans(graph, inits)
    n = len(graph.node)
    opens_at: dict[int, list[str]] = {}
    for t, (first, last) in spans.items():
        if first < last:
            opens_at.setdefault(first, []).append(t)
    open_: set[str] = set(opens_at.get(-1, ()))
    found: dict[frozenset[str], int] = {}
    for p in range(n - 1):
        open_.update(opens_at.get(p, ()))
        open_ = {t for t in open_ if spans[t][1] > p}
        if 1 <= len(open_) <= max_tensors and all(0 <= spans[t][0] and spans[t][1] < n for t in open_):
            found.setdefault(frozenset(open_), p)
    return [(p, ts) for ts, p in found.items()]


def _min_cut_order(graph: onnx.GraphProto, inits: set[str], nbytes: dict[str, int]) -> None:
    """Reorder `graph.node` (still topologically) so that inside every stretch between two single-tensor cuts (and
    before the first, after the last) the stretch's minimum cut by bytes is a prefix boundary (module docstring)."""
    import networkx as nx

    spans = _spans(graph, inits)
    const = _constants(graph, inits)
    singles = sorted(p for p, _ in _crossings(graph, inits, 1))
    nodes = list(graph.node)
    order: list[int] = []
    for lo, hi in zip([0, *[p + 1 for p in singles]], [*[p + 1 for p in singles], len(nodes)], strict=True):
        stretch = range(lo, hi)
        g = nx.DiGraph()
        # Each tensor is a vertex of its own, so that one sent to several consumers is paid for once: producer ->
        # tensor at its bytes, tensor -> consumers unbounded; consumer -> producer unbounded (an edge without a
        # capacity is infinite to networkx), so that the head holds every predecessor of what it holds.
        for k in stretch:
            for t in set(nodes[k].input):
                if t not in spans or t in const:
                    continue
                first = spans[t][0]
                if first >= lo:
                    g.add_edge(("node", first), ("tensor", t), capacity=nbytes.get(t, 0))
                    g.add_edge(("node", k), ("node", first))
                else:  # the stretch's input: always in the head
                    g.add_edge("source", ("tensor", t))
                g.add_edge(("tensor", t), ("node", k))
            for t in nodes[k].output:
                if t in spans and t not in const and spans[t][1] >= hi:  # used after the stretch
                    g.add_edge(("node", k), ("tensor", t), capacity=nbytes.get(t, 0))
                    g.add_edge(("tensor", t), "sink")
        head: set[int] = set()
        if "source" in g and "sink" in g:
            try:
                _, (reach, _) = nx.minimum_cut(g, "source", "sink")
                head = {v[1] for v in reach if isinstance(v, tuple) and v[0] == "node"}
            except nx.NetworkXUnbounded:
                pass
        order += [k for k in stretch if k in head or not any(t in spans for t in nodes[k].output)]
        order += [k for k in stretch if k not in head and any(t in spans for t in nodes[k].output)]
    assert sorted(order) == list(range(len(nodes)))
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)


def _no_cut_message(graph: onnx.GraphProto, inits: set[str], name: str, max_tensors: int = 1) -> str:
    n = len(graph.node)
    if n < 2:
        return f"{name} has {n} node(s): there is nothing to cut between; partition a model with several layers"
    spans = _spans(graph, inits)
    nodes = graph.node
    # The activation that stays open longest, past the input, is what keeps every position from being a cut.
    t, (first, last) = max(((t, s) for t, s in spans.items() if s[0] >= 0), key=lambda ts: ts[1][1] - ts[1][0])
    closer = nodes[last].name or f"#{last}" if last < n else "the model's output"
    many = "at least two activations" if max_tensors == 1 else f"more than {max_tensors} activations"
    return (f"{name} has no valid cut: at every position {many} cross; '{t}' from node "
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
    from .files import atomic_write

    data = model.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))
