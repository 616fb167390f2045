"""A CNN as a sequence of layers, the auxiliary head each layer learns from, and the early-exit model (NeuroFlux's,
registered here with the other models so that `edgeprune.models` needs nothing from the training packages).

A model is cut with torch.fx: its graph, with every module that is not an `nn.Sequential` kept whole (a residual
block stays one step), must be a chain, each step feeding only the next. Steps are grouped into *layers*: a new
layer starts at each step that holds a convolution; parameter-free steps and norms join the layer before them.
Everything after the last convolution and its norm and activation (pooling, flatten, the linear classifier) is the
model's own *classifier*, the head of the last layer. Each layer is an fx `GraphModule` sharing the model's
parameters.

The auxiliary head of a layer (reconstructed: NeuroFlux's method section was not readable) follows InfoPro's
`AuxClassifier` and decoupled greedy learning: a 1×1 convolution to `width` filters, BN, ReLU, adaptive average
pooling to `pool`×`pool`, then a two-layer MLP. `width` is chosen per layer by the planner (plan.aux_widths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..errors import UnsupportedModelError
from .registry import ModelSpec, create, register


class _Tracer(fx.Tracer):
    """Keeps every module that is not a plain `nn.Sequential` as one step (residual blocks stay whole)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, nn.Sequential) or super().is_leaf_module(m, qualname)


@dataclass
class Chain:
    """A model cut into `layers` (each learns from an auxiliary head) and its `classifier`."""

    layers: list[fx.GraphModule]
    classifier: fx.GraphModule
    names: list[str]  # the first module of each layer, e.g. 'features.4.0'


def _has_conv(gm_root: nn.Module, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    m = gm_root.get_submodule(node.target)
    return any(isinstance(x, nn.modules.conv._ConvNd) for x in m.modules())


_ACTIVATIONS = (torch.relu, nn.functional.relu, torch.sigmoid, torch.tanh, nn.functional.gelu, nn.functional.silu)


def _is_norm_or_activation(root: nn.Module, node: fx.Node) -> bool:
    """Whether a step after the last convolution still belongs to it (its norm, its activation), not to the
    classifier (which starts at pooling, flattening or a linear layer)."""
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        return isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) or type(m).__module__ == \
            "torch.nn.modules.activation"
    return node.op == "call_function" and node.target in _ACTIVATIONS


def cut(model: nn.Module, name: str = "model") -> Chain:
    """`model` as a chain of layers and its classifier, sharing its parameters. Raises UnsupportedModelError for
    a model whose graph branches outside a module (naming the module), or which has no convolution."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many kinds for data-dependent Python control flow
        raise UnsupportedModelError(f"{name} cannot be traced into a layer sequence by torch.fx ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:160]}); NeuroFlux trains chains of layers such as "
                                    "VGG or ResNet-20 (whose residual blocks count as one layer)") from None
    steps = [n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    if any(n.op == "get_attr" for n in graph.nodes):
        raise UnsupportedModelError(f"{name} reads a parameter outside its modules; NeuroFlux needs every "
                                    "parameter inside a layer module")
    prev = next(n for n in graph.nodes if n.op == "placeholder")
    for n in steps:
        inputs = n.all_input_nodes
        if inputs != [prev] or len(n.users) != 1:
            what = n.target if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
            raise UnsupportedModelError(
                f"{name} cannot be cut into a layer sequence at {n.op.replace('call_', '')} {what!r}: it takes "
                f"{len(inputs)} input(s) and feeds {len(n.users)} step(s) (a branch outside one module); wrap each "
                "branching part in a module of its own (as ResNet's blocks are), or train a chain model (VGG)")
        prev = n
    convs = [i for i, n in enumerate(steps) if _has_conv(model, n)]
    if not convs:
        raise UnsupportedModelError(f"{name} has no convolution; NeuroFlux trains convolutional networks")
    end = convs[-1] + 1
    while end < len(steps) and _is_norm_or_activation(model, steps[end]):
        end += 1
    starts = convs + [end]
    # steps before the first convolution (rare: a normalisation) run with the first layer
    groups = [steps[0 if k == 0 else a:b] for k, (a, b) in enumerate(zip(starts, starts[1:], strict=False))]
    head = steps[end:]
    if not head:
        raise UnsupportedModelError(f"{name} ends with a convolution; NeuroFlux needs the model's own classifier "
                                    "after its last convolution")
    layers = [_sub(model, graph, g) for g in groups]
    return Chain(layers, _sub(model, graph, head), [str(g[0].target) for g in groups])


def _sub(root: nn.Module, graph: fx.Graph, nodes: list[fx.Node]) -> fx.GraphModule:
    """The consecutive `nodes` of a chain as a module of one input (parameters shared with `root`)."""
    sub = fx.Graph()
    x = sub.placeholder("x")
    env = {nodes[0].all_input_nodes[0]: x}
    for n in nodes:
        env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(env[nodes[-1]])
    return fx.GraphModule(root, sub)


class AuxHead(nn.Module):
    """conv1×1(width) → BN → ReLU → avgpool(pool×pool) → Linear(hidden) → ReLU → Linear(classes)."""

    def __init__(self, in_channels: int, width: int, num_classes: int, pool: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(nn.Linear(width * pool * pool, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.conv(x)), 1))


class ExitModel(nn.Module):
    """Layers 0..exit of a model, then the head that layer learnt from: a standalone classifier."""

    def __init__(self, trunk: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*trunk)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


EXIT_MODEL = "neuroflux_exit"


@register(EXIT_MODEL)
def exit_model(num_classes: int, in_channels: int, base: dict | None = None, exit: int | None = None,
               head: dict | None = None) -> ExitModel:
    """The exit model of `base` (a model spec dict; default VGG-11) at layer `exit` (default the last): `head` is
    the AuxHead's keyword arguments (in_channels, width, pool, hidden), or None where the exit is the last layer
    (the model's own classifier). Registered, so an exit run's model.pt is rebuilt from plain JSON."""
    spec = ModelSpec.from_dict(base or {"name": "vgg11", "num_classes": num_classes, "in_channels": in_channels})
    full = create(spec.name, num_classes, in_channels, **spec.kwargs)
    chain = cut(full, spec.name)
    exit = len(chain.layers) - 1 if exit is None else exit
    if not 0 <= exit < len(chain.layers):
        raise UnsupportedModelError(f"exit {exit} is outside the {len(chain.layers)} layers of {spec.name}")
    if head is None:
        if exit != len(chain.layers) - 1:
            raise UnsupportedModelError(f"exit {exit} of {spec.name} needs an auxiliary head (only the last layer, "
                                        f"{len(chain.layers) - 1}, exits through the model's classifier)")
        return ExitModel(chain.layers, chain.classifier)
    return ExitModel(chain.layers[:exit + 1], AuxHead(num_classes=num_classes, **head))
