"""ScissionLite's transfer layer: 2x2 max-pool on the sending side of a cut, nearest up-sampling on the receiving
side, so a 4-D activation crosses the link with exactly 4x fewer bytes. Both are parameter-free (as in ScissionTL's
benchmark code); the tail then sees an approximation of the activation, which costs accuracy unless it is fine-tuned
for it.

A cut qualifies when its activation is N x C x H x W with H and W even: a 2-D output has nothing to pool, and an odd
side would not come back to its size after pooling and doubling.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnx.compose
from onnx import TensorProto, helper

from ..errors import ConfigError

DOWN_IN, DOWN_OUT = "tl_in", "tl_pooled"
UP_IN, UP_OUT = "tl_pooled", "tl_restored"


def check(shape: Sequence[int], cut: str) -> None:
    """Refuse a transfer layer at a cut whose activation (per-sample `shape`) cannot take one."""
    if len(shape) != 3:
        raise ConfigError(f"no transfer layer at cut {cut!r}: its output is {len(shape) + 1}-D "
                          f"({'x'.join(map(str, shape))} per sample), the layer pools N x C x H x W maps; "
                          "choose a cut before the flatten/classifier, or drop --tl")
    if shape[1] < 2 or shape[2] < 2 or shape[1] % 2 or shape[2] % 2:
        raise ConfigError(f"no transfer layer at cut {cut!r}: its maps are {shape[1]}x{shape[2]}, 2x2 pooling needs "
                          "even sides of at least 2; choose an earlier cut, or drop --tl")


def eligible(shape: Sequence[int]) -> bool:
    try:
        check(shape, "")
    except ConfigError:
        return False
    return True


def _opset(like: onnx.ModelProto) -> int:
    return next((o.version for o in like.opset_import if o.domain in ("", "ai.onnx")), 18)


def _model(nodes, inputs, outputs, like: onnx.ModelProto, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "transfer_layer", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _opset(like))])
    model.ir_version = like.ir_version  # onnx.compose merges only models of one IR version
    return model


def down_layer(shape: Sequence[int], like: onnx.ModelProto) -> onnx.ModelProto:
    """MaxPool 2x2 stride 2 over a N x C x H x W input (per-sample `shape` = C, H, W)."""
    c, h, w = shape
    x = helper.make_tensor_value_info(DOWN_IN, TensorProto.FLOAT, ["batch", c, h, w])
    y = helper.make_tensor_value_info(DOWN_OUT, TensorProto.FLOAT, ["batch", c, h // 2, w // 2])
    pool = helper.make_node("MaxPool", [DOWN_IN], [DOWN_OUT], kernel_shape=[2, 2], strides=[2, 2], name="tl_maxpool")
    return _model([pool], [x], [y], like)


def up_layer(shape: Sequence[int], like: onnx.ModelProto) -> onnx.ModelProto:
    """Nearest up-sampling x2 back to per-sample `shape` (C, H, W)."""
    c, h, w = shape
    x = helper.make_tensor_value_info(UP_IN, TensorProto.FLOAT, ["batch", c, h // 2, w // 2])
    y = helper.make_tensor_value_info(UP_OUT, TensorProto.FLOAT, ["batch", c, h, w])
    scales = helper.make_tensor("tl_scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    up = helper.make_node("Resize", [UP_IN, "", "tl_scales"], [UP_OUT], mode="nearest", name="tl_upsample")
    return _model([up], [x], [y], like, [scales])


def with_down(head: onnx.ModelProto, shape: Sequence[int]) -> onnx.ModelProto:
    """`head` (whose one output is the cut activation) followed by the max-pool."""
    return onnx.compose.merge_models(head, down_layer(shape, head), io_map=[(head.graph.output[0].name, DOWN_IN)])


def with_up(tail: onnx.ModelProto, shape: Sequence[int]) -> onnx.ModelProto:
    """The up-sampling followed by `tail` (whose one input is the cut activation)."""
    return onnx.compose.merge_models(up_layer(shape, tail), tail, io_map=[(UP_OUT, tail.graph.input[0].name)])
