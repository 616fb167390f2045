import os

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_bn, small_vgg
from onnx import TensorProto, helper
from torch import nn

from edgeprune import models, segments
from edgeprune.errors import UnsupportedModelError
from edgeprune.export import ort_session, to_onnx_bytes


def _exported(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    return to_onnx_bytes(model.eval(), shape)


def _max_recompose_error(seg: segments.Segments, data: bytes) -> float:
    """Largest |whole(x) - suffix(prefix(x))| over every valid cut, on one random input."""
    x = np.random.default_rng(0).standard_normal((1, *seg.input_shape)).astype(np.float32)
    ref = ort_session(data).run(None, {seg.input: x})[0]
    worst = 0.0
    for k in range(1, seg.n_blocks):
        act = ort_session(seg.span(0, k).SerializeToString()).run(None, {seg.input: x})[0]
        assert act.shape[1:] == seg.cuts[k - 1].shape
        out = ort_session(seg.span(k, seg.n_blocks).SerializeToString()).run(None, {seg.boundary(k): act})[0]
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def test_chain_has_a_cut_after_every_node_but_the_last():
    torch.manual_seed(0)
    data = _exported(randomize_bn(small_vgg()), (1, 8, 8))
    seg = segments.load(data, "small_vgg")
    nodes = onnx.load_from_string(data).graph.node
    # BN folds into the convolutions on export: conv relu conv relu pool conv relu conv relu gap flatten gemm
    assert len(nodes) == 12
    assert [c.position for c in seg.cuts] == list(range(11))
    assert seg.cuts[4].op == "MaxPool" and seg.cuts[4].shape == (32, 4, 4) and seg.cuts[4].bytes == 32 * 16 * 4
    assert seg.n_blocks == 12
    assert _max_recompose_error(seg, data) <= 1e-5


def test_residual_blocks_are_never_cut_inside():
    torch.manual_seed(0)
    data = _exported(models.create("resnet20", num_classes=10, in_channels=3), (3, 16, 16))
    seg = segments.load(data, "resnet20")
    ops = [c.op for c in seg.cuts]
    # stem conv and relu; then each of the 9 blocks can be cut only after its Add and after the ReLU that follows
    assert ops[:2] == ["Conv", "Relu"]
    assert ops[2:20] == ["Add", "Relu"] * 9
    assert _max_recompose_error(seg, data) <= 1e-5


def test_blocks_run_alone_and_chain_to_the_whole_output():
    torch.manual_seed(0)
    data = _exported(models.create("tv:resnet18", num_classes=10, in_channels=3), (3, 32, 32))
    seg = segments.load(data, "tv:resnet18")
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = x
    for i in range(seg.n_blocks):
        sess = ort_session(seg.block(i).SerializeToString())
        a = sess.run(None, {seg.boundary(i): a})[0]
    ref = ort_session(data).run(None, {seg.input: x})[0]
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-5)


class TwoBranches(nn.Module):
    """Two branches from the input that merge only at the output: no position has one activation crossing."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return torch.relu(self.a(x)) + self.b(x)


def test_no_valid_cut_names_the_blocking_node():
    data = _exported(TwoBranches(), (1, 4, 4))
    with pytest.raises(UnsupportedModelError, match=r"no valid cut: .*stays open until 'node_Add|/Add") as e:
        segments.load(data, "twobranch")
    assert "twobranch" in str(e.value) and "\n" not in str(e.value)


def test_single_node_model_has_nothing_to_cut():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="only")], "g", [x], [y])
    with pytest.raises(UnsupportedModelError, match="1 node"):
        segments.load(helper.make_model(g), "one")


def test_two_outputs_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("y", "z")]
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])]
    with pytest.raises(UnsupportedModelError, match="1 inputs and 2 outputs"):
        segments.load(helper.make_model(helper.make_graph(nodes, "g", [x], outs)), "two")


# One of each graph pattern runs in every test run (residual adds, inverted residuals, concatenations, fire modules);
# the rest, about 15 minutes on 2 busy cores, with EDGEPRUNE_ZOO=1.
EVERY_RUN = ["tv:resnet18", "tv:mobilenet_v2", "tv:googlenet", "tv:squeezenet1_1"]
ZOO_ONLY = ["tv:vgg11", "tv:mobilenet_v3_small", "tv:shufflenet_v2_x0_5", "tv:mnasnet0_5", "tv:densenet121",
            "tv:efficientnet_b0", "tv:regnet_x_400mf", "tv:alexnet"]
ZOO = pytest.mark.skipif(not os.environ.get("EDGEPRUNE_ZOO"), reason="set EDGEPRUNE_ZOO=1 for every listed model")


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY_RUN + [pytest.param(n, marks=ZOO) for n in ZOO_ONLY])
def test_torchvision_classifiers_recompose(name):
    """Every cut of torchvision classifiers (fresh weights, 96 pixels) recomposes to the whole output within 1e-5."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=3)
    if name == "tv:googlenet":
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    data = _exported(model, (3, 96, 96))
    seg = segments.load(data, name)
    assert seg.cuts
    assert _max_recompose_error(seg, data) <= 1e-5
