import pytest
import torch
from conftest import randomize_bn
from torch import nn
from torch.nn.utils import prune

from edgeprune import export, models, structure, surgery
from edgeprune.dead import dead_channels, remove_dead
from edgeprune.measure import count_params

X = torch.randn(1, 3, 32, 32)


def _model(name: str, random_bn: bool = False) -> nn.Module:
    """A fresh model; `random_bn` gives every BN a non-zero shift, so dead channels output non-zero constants."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10)
    return randomize_bn(model, seed=1, bias_shift=-0.3) if random_bn else model.eval()


def _kill(model: nn.Module, kills: dict[str, list[int]]) -> nn.Module:
    """Mask whole output channels to zero, as a sparse training run can leave them."""
    for name, channels in kills.items():
        layer = model.get_submodule(name)
        mask = torch.ones_like(layer.weight)
        mask[channels] = 0
        prune.custom_from_mask(layer, "weight", mask)
    return model


def test_dead_channels_sees_the_masks():
    model = _kill(_model("lenet5"), {"features.0": [1, 4], "classifier.1": [7]})
    dead = dead_channels(model)
    assert dead["features.0"].nonzero().flatten().tolist() == [1, 4]
    assert dead["classifier.1"].nonzero().flatten().tolist() == [7]
    assert not dead["features.3"].any()


def test_plain_chain_loses_its_dead_channels_exactly():
    kills = {"features.0.0": [1, 2, 3], "features.7.0": list(range(0, 256, 3)), "features.16.0": list(range(100))}
    model = _kill(_model("vgg16"), kills)
    net, report = remove_dead(model, X)
    assert report.max_abs_error <= 1e-5
    for name, channels in kills.items():
        layer = report.layers[name]
        assert (layer.dead, layer.removed, layer.after) == (len(channels), len(channels), layer.before - len(channels))
        assert net.get_submodule(name).out_channels == layer.after
    assert count_params(net)[0] < count_params(model)[0]
    assert hasattr(model.features[0][0], "weight_mask")  # the caller's model is untouched


def test_resnet_dead_channels_go_only_where_dead_in_every_coupled_layer():
    stage1 = ["features.0.0", "features.1.conv2.0", "features.2.conv2.0", "features.3.conv2.0"]
    kills = {n: [3, 4] for n in stage1}  # dead in the whole residual stream of stage 1
    kills["features.1.conv2.0"] = [3, 4, 5]  # channel 5 is alive in the stem: it has to stay
    kills["features.5.conv1.0"] = [0, 1, 2, 9]
    model = _kill(_model("resnet20"), kills)
    net, report = remove_dead(model, X)
    assert report.max_abs_error <= 1e-5
    assert all(report.layers[n].after == 14 for n in stage1)
    assert report.layers["features.5.conv1.0"].after == 28
    assert "[5]" in report.kept_dead["features.1.conv2.0"]


def test_folded_constants_are_exact_through_pool_and_linear():
    kills = {"features.16.0": list(range(100))}  # the last conv: conv -> BN -> ReLU -> pool -> fc
    net, report = remove_dead(_kill(_model("vgg16", random_bn=True), kills), X)
    assert report.layers["features.16.0"].folded > 0
    assert report.folded_into == {"fc": "bias"} and report.approximate == []
    assert report.max_abs_error <= 1e-5
    _, unfolded = remove_dead(_kill(_model("vgg16", random_bn=True), kills), X, fold_constants=False)
    assert unfolded.max_abs_error > 1e-3  # what the DNNShifter repository's removal loses


def test_linear_dead_units_fold_into_the_next_bias():
    net, report = remove_dead(_kill(_model("lenet5"), {"classifier.1": [0, 5, 9]}), X)
    assert net.classifier[1].out_features == 117 and report.folded_into == {"classifier.3": "bias"}
    assert report.max_abs_error <= 1e-5


def test_folds_into_a_padded_conv_are_reported_approximate_and_help():
    kills = {"features.3.0": list(range(20))}  # conv -> BN -> ReLU -> pool -> 3x3 conv with zero padding
    folded = remove_dead(_kill(_model("vgg16", random_bn=True), kills), X)[1]
    unfolded = remove_dead(_kill(_model("vgg16", random_bn=True), kills), X, fold_constants=False)[1]
    assert folded.approximate == ["features.4.0"]
    assert folded.folded_into == {"features.4.0": "running mean of features.4.1"}  # the conv stays bias-free
    assert folded.max_abs_error < unfolded.max_abs_error


def test_dead_output_units_stay():
    net, report = remove_dead(_kill(_model("lenet5"), {"classifier.5": [2]}), X)
    assert net.classifier[5].out_features == 10 and "output" in report.kept_dead["classifier.5"]


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_shrunk_models_save_reload_and_export(name, tmp_path):
    kills = {"resnet20": {"features.4.conv1.0": [0, 1, 2, 3]}, "mobilenetv2": {"features.3.layers.0.0": [0, 5]}}
    net, report = remove_dead(_kill(_model(name, random_bn=True), kills[name]), X)
    assert sum(layer.removed for layer in report.layers.values()) > 0
    assert report.to_dict()["surgery"]["params_after"] == count_params(net)[0]
    export.save_model(net, tmp_path / "m.pt")
    back = export.load_model(tmp_path / "m.pt").eval()
    with torch.no_grad():
        assert torch.equal(back(X), net(X))
    assert export.to_onnx_bytes(net, (3, 32, 32))


def test_group_level_decisions_remove_the_requested_fraction_of_every_group():
    torch.manual_seed(0)
    model, x = models.create("resnet20", num_classes=10), torch.randn(1, 3, 32, 32)
    keep = structure.group_keep(model, x, 0.3)
    report = surgery.materialize(model, keep, x)
    assert report.skipped == {}
    for name, kept in keep.items():  # every coupled layer got the same decision, so each lands in full
        assert report.after[name] == len(kept) == report.before[name] - round(0.3 * report.before[name])
    assert "classifier" not in " ".join(keep)  # the model's output never changes


def _counting_traces(monkeypatch) -> list:
    import torch_pruning as tp

    calls, build = [], tp.DependencyGraph.build_dependency

    def counted(self, *args, **kwargs):
        calls.append(1)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counted)
    return calls


def test_group_keep_hands_its_trace_to_materialize_once_and_only_for_the_same_model(monkeypatch):
    import copy

    x = torch.randn(1, 3, 32, 32)
    model = _model("resnet20")
    twin = copy.deepcopy(model)
    calls = _counting_traces(monkeypatch)
    keep = structure.group_keep(model, x, 0.3)
    assert len(calls) == 1 and isinstance(keep, surgery.Decisions)
    report = surgery.materialize(model, keep, x)
    assert len(calls) == 1 and keep.traced is None  # reused, and not again: pruning changed torch-pruning's records
    fresh = surgery.materialize(twin, dict(keep), x)  # the same decisions, traced anew
    assert len(calls) == 2 and fresh.kept == report.kept and fresh.params_after == report.params_after
    assert type(copy.deepcopy(keep)) is dict

    other = _model("resnet20")
    keep = structure.group_keep(other, x, 0.3)
    other.fc = nn.Linear(other.fc.in_features, 10)  # changed since: a new module
    surgery.materialize(other, keep, x)
    assert len(calls) == 4


def test_remove_dead_traces_once(monkeypatch):
    model = _kill(_model("resnet20"), {"features.1.conv1.0": [0, 1, 2]})
    calls = _counting_traces(monkeypatch)
    small, report = remove_dead(model, torch.randn(1, 3, 32, 32))
    assert len(calls) == 1 and report.layers["features.1.conv1.0"].after == 13 and report.max_abs_error < 1e-4
