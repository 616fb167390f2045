import math

import pytest
import torch
from torch import nn

from edgeprune import export, jobs, models
from edgeprune.dead import dead_channels
from edgeprune.errors import ConfigError
from edgeprune.methods.pai import prune_at_init
from edgeprune.methods.reconvene import ReconveneOptions, reconvene
from edgeprune.train import TrainConfig

SHAPE = (1, 12, 12)


def _small():
    torch.manual_seed(0)
    return models.create("conftest:small_vgg", num_classes=10, in_channels=1)


def _convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("criterion, rule", [("magnitude", "channels"), ("synflow", "channels"),
                                             ("synflow", "sqrt")])
def test_width_conversion_yields_exactly_the_decided_widths(criterion, rule):
    model = _small()
    before = {n: m.out_channels for n, m in _convs(model).items()}
    info = reconvene(model, ReconveneOptions(criterion=criterion, sparsity=0.9, rounds=10, min_layer_density=0,
                                             width_rule=rule), None, SHAPE, progress=False)
    fraction = (lambda d: d) if rule == "channels" else math.sqrt
    non_sensitive = [g for g in info["groups"] if not g["sensitive"]]
    assert non_sensitive, "the criterion found no layer sparser than the global sparsity"
    for g in info["groups"]:
        (layer,) = g["layers"]  # a plain chain: every conv is a group of its own
        expected = (math.ceil(fraction(1 - g["sparsity"]) * before[layer] - 1e-9) if not g["sensitive"]
                    else before[layer])
        assert _convs(model)[layer].out_channels == expected == g["width_after"]
        assert (g["sparsity"] > info["reference_sparsity"]) != g["sensitive"]
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_rectified_layers_are_fresh_and_sensitive_layers_keep_their_masks():
    model = _small()
    original = {n: m.weight.detach().clone() for n, m in _convs(model).items()}
    info = reconvene(model, ReconveneOptions(criterion="magnitude", sparsity=0.9, min_layer_density=0), None,
                     SHAPE, progress=False)
    assert info["rectified"]
    for name in info["rectified"]:
        m = model.get_submodule(name)
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
        elif isinstance(m, nn.Conv2d):
            w = getattr(m, "weight_orig", m.weight)
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.3)  # Kaiming, new fan-out
            assert w.shape != original[name].shape
    sensitive = [g["layers"][0] for g in info["groups"] if g["sensitive"]]
    for name in sensitive:  # still unstructured: masked, and at its pruned density
        assert hasattr(model.get_submodule(name), "weight_mask")


def test_dead_conversion_removes_exactly_the_empty_channels():
    opts = ReconveneOptions(criterion="magnitude", sparsity=0.98, conversion="dead")
    reference = _small()
    prune_at_init(reference, opts.pai(), None, SHAPE, progress=False)
    dead = dead_channels(reference)
    model = _small()
    info = reconvene(model, opts, None, SHAPE, progress=False)
    assert any(g["width_after"] < g["width_before"] for g in info["groups"])
    for g in info["groups"]:
        (layer,) = g["layers"]
        expected = g["width_before"] if g["sensitive"] else max(1, int((~dead[layer]).sum()))
        assert g["width_after"] == expected


def test_residual_groups_shrink_together_and_the_run_trains_with_masks(tmp_path):
    cfg = jobs.RunConfig(
        command="prune", model="resnet20", data={"name": "synthetic", "shape": SHAPE, "size": 64,
                                                 "batch_size": 32},
        train=TrainConfig(epochs=1, lr=0.05), measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False),
        method={"name": "reconvene", "criterion": "synflow", "rounds": 10, "sparsity": 0.9},
    )
    report = jobs.prune(cfg, tmp_path / "r", progress=False)
    for g in report.details["groups"]:
        widths = {export.load_model(tmp_path / "r" / "model.pt").get_submodule(n).out_channels for n in g["layers"]}
        assert widths == {g["width_after"]}  # tied layers keep the same channels
    dense = sum(p.numel() for p in models.create("resnet20", num_classes=10, in_channels=SHAPE[0]).parameters())
    small = sum(p.numel() for p in export.load_model(tmp_path / "r" / "model.pt").parameters())
    assert report.profile.params == small < 0.9 * dense  # physically smaller than the dense ResNet-20
    saved = torch.load(tmp_path / "r" / "masks.pt", weights_only=True)
    model = export.load_model(tmp_path / "r" / "model.pt")
    assert saved, "sensitive layers keep masks"
    for name, mask in saved.items():  # after training, masked weights are still zero
        assert torch.all(model.get_parameter(name)[~mask] == 0)


@pytest.mark.parametrize("bad, message", [({"conversion": "both"}, "conversion"), ({"reference": "max"}, "reference"),
                                          ({"width_rule": "cube"}, "width_rule"),
                                          ({"round_to": 0}, "round_to")])
def test_bad_options(bad, message):
    with pytest.raises(ConfigError, match=message):
        ReconveneOptions(**bad)


def test_round_to_larger_than_a_layer_is_refused():
    with pytest.raises(ConfigError, match="round_to=128"):
        reconvene(_small(), ReconveneOptions(criterion="magnitude", sparsity=0.9, round_to=128), None, SHAPE,
                  progress=False)


def test_masked_layers_that_lost_inputs_keep_their_weight_budget():
    """A sliced mask could lose every surviving weight of a layer (cutting the network); the layer instead
    gets a fresh mask with as many weights as the criterion gave it (all, if it is now smaller)."""
    model = _small()
    info = reconvene(model, ReconveneOptions(criterion="magnitude", sparsity=0.95), None, SHAPE, progress=False)
    before = {r["layer"]: r["kept"] for r in info["pai"]["layers"]}
    assert info["masks_rechosen"]
    for row in info["layers"]:
        if row["layer"] in info["masks_rechosen"]:
            assert row["kept"] == min(before[row["layer"]], row["weights"])
        assert row["kept"] > 0
