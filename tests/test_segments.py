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
        out = ort_session(seg.span(k, seg.n_blocks).SerializeToString()).run(None, {seg.boundaries(k)[0]: act})[0]
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
        a = sess.run(None, {seg.boundaries(i)[0]: a})[0]
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


# ------------------------------------------------------------------------------------------------ multi-tensor cuts


class MiniInception(nn.Module):
    """A stem, one inception-like module (three branches of different depths, concatenated), and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 5, 1), nn.ReLU())
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 3, 1))
        self.head = nn.Sequential(nn.Conv2d(14, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 10))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(torch.cat([self.a(x), self.b(x), self.c(x)], 1))


def _run_chain(seg: segments.Segments, x: np.ndarray) -> np.ndarray:
    """Every block alone, in order, each fed the previous one's outputs by name."""
    acts = [x]
    for i in range(seg.n_blocks):
        acts = ort_session(seg.block(i).SerializeToString()).run(None, dict(zip(seg.boundaries(i), acts, strict=True)))
    return acts[0]


def _multi_recompose_error(seg: segments.Segments, data: bytes, cuts: list[int]) -> float:
    x = np.random.default_rng(0).standard_normal((1, *seg.input_shape)).astype(np.float32)
    ref = ort_session(data).run(None, {seg.input: x})[0]
    worst = 0.0
    for k in cuts:
        acts = ort_session(seg.span(0, k).SerializeToString()).run(None, {seg.input: x})
        assert [a.shape[1:] for a in acts] == list(seg.cuts[k - 1].shapes)
        tail = ort_session(seg.span(k, seg.n_blocks).SerializeToString())
        assert [i.name for i in tail.get_inputs()] == list(seg.boundaries(k))
        out = tail.run(None, dict(zip(seg.boundaries(k), acts, strict=True)))[0]
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def _computing_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that read an activation (not only constants)."""
    const = {t.name for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if all(i in const for i in node.input if i):
            const.update(node.output)
        else:
            names.append(node.name)
    return names


def test_branchy_model_gets_multi_tensor_cuts_that_recompose_exactly():
    torch.manual_seed(0)
    data = _exported(MiniInception(), (3, 8, 8))
    single = segments.load(data, "mini")
    seg = segments.load(data, "mini", max_tensors=3)
    assert all(c.single for c in single.cuts)
    widths = sorted({len(c.tensors) for c in seg.cuts})
    assert widths == [1, 2, 3] and len(seg.cuts) > len(single.cuts)
    # every single-tensor cut is still there; a multi-tensor cut's bytes are its tensors' bytes together
    assert {c.tensors for c in single.cuts} <= {c.tensors for c in seg.cuts}
    for c in seg.cuts:
        assert c.bytes == sum(int(np.prod(s)) * 4 for s in c.shapes)
    multi = [k for k in range(1, seg.n_blocks) if not seg.cuts[k - 1].single]
    assert _multi_recompose_error(seg, data, multi) <= 1e-5
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run_chain(seg, x), ort_session(data).run(None, {seg.input: x})[0], rtol=0, atol=1e-5)
    # the blocks partition the computation: no node is run twice, none is left out
    names = [n for i in range(seg.n_blocks) for n in _computing_nodes(seg.block(i))]
    assert sorted(names) == sorted(_computing_nodes(onnx.load_from_string(data)))
    with pytest.raises(ValueError, match="it has `shapes`, not one shape"):
        _ = seg.cuts[multi[0] - 1].shape
    with pytest.raises(ValueError, match="use boundaries"):
        seg.boundary(multi[0])


def test_two_branches_to_the_output_can_be_cut_with_two_tensors():
    data = _exported(TwoBranches(), (1, 4, 4))
    seg = segments.load(data, "twobranch", max_tensors=2)
    assert seg.cuts and all(len(c.tensors) == 2 for c in seg.cuts)
    assert _multi_recompose_error(seg, data, list(range(1, seg.n_blocks))) <= 1e-5
    with pytest.raises(ValueError, match="max_tensors must be >= 1"):
        segments.load(data, "twobranch", max_tensors=0)


def _fresh(name: str) -> nn.Module:
    """A torchvision classifier with weights scaled to keep activations O(1) (Inception-v3's own initialisation
    lets them grow to ~1e9, where ONNX Runtime and PyTorch differ by more than export's check allows)."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=3).eval()
    if hasattr(model, "aux_logits"):
        model.aux_logits, model.AuxLogits = False, None
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    return model


@pytest.mark.slow
@pytest.mark.parametrize(("name", "shape"), [("tv:inception_v3", (3, 96, 96)), ("tv:densenet121", (3, 64, 64))])
def test_branchy_torchvision_models_get_multi_tensor_cuts_that_recompose(name, shape):
    """Inception-v3 and DenseNet-121: many more cuts with up to 8 tensors crossing; a spread of the multi-tensor
    ones recomposes (head then tail) to the whole model within 1e-5, and so does a 3-stage split where a tensor
    passes through the middle stage."""
    data = _exported(_fresh(name), shape)
    single = segments.load(data, name)
    seg = segments.load(data, name, max_tensors=8)
    multi = [k for k in range(1, seg.n_blocks) if not seg.cuts[k - 1].single]
    assert len(multi) >= 50 and len(seg.cuts) >= 3 * len(single.cuts)
    assert _multi_recompose_error(seg, data, multi[:: max(1, len(multi) // 8)]) <= 1e-5
    # three stages around two multi-tensor cuts sharing a tensor: the middle stage passes it through
    a, b = next((i, j) for i in multi for j in multi if i < j and set(seg.boundaries(i)) & set(seg.boundaries(j)))
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    acts = [x]
    for first, stop in ((0, a), (a, b), (b, seg.n_blocks)):
        feeds = dict(zip(seg.boundaries(first), acts, strict=True))
        acts = ort_session(seg.span(first, stop).SerializeToString()).run(None, feeds)
    assert float(np.abs(acts[0] - ort_session(data).run(None, {seg.input: x})[0]).max()) <= 1e-5


class SqueezeTwice(nn.Module):
    """Two branches that each squeeze to one channel, then expand: exported branch after branch, so no prefix of the
    exported order has both squeezed tensors alone open, yet that pair is the cheapest place to cut."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 1, 1), nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 8, 1))
        self.b = nn.Sequential(nn.Conv2d(8, 1, 1), nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 8, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(self.a(x) + self.b(x))


def test_the_minimum_cut_by_bytes_becomes_a_cut_point():
    torch.manual_seed(0)
    data = _exported(SqueezeTwice(), (3, 8, 8))
    graph = onnx.load_from_string(data).graph
    squeezed = {n.output[0] for n in graph.node if n.name.endswith("a.0/Conv") or n.name.endswith("b.0/Conv")}
    assert len(squeezed) == 2
    seg = segments.load(data, "squeeze", max_tensors=2)
    inside = [c for c in seg.cuts if not c.single]
    # the two 1-channel maps, 2 x 8 x 8 floats, and nothing inside the branches is cheaper
    best = min(inside, key=lambda c: c.bytes)
    assert set(best.tensors) == squeezed and best.bytes == 2 * 64 * 4
    k = seg.cuts.index(best) + 1
    assert _multi_recompose_error(seg, data, [k]) <= 1e-5
    # in the exported order it was no prefix boundary: the cheapest multi-tensor prefix there sends 8 + 1 channels
    names = [n.name for n in graph.node]
    assert names.index(next(n.name for n in graph.node if n.output[0] in squeezed and "b.0" in n.name)) > \
        names.index(next(n.name for n in graph.node if "a.2" in n.name))
