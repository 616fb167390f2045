import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import nn
from torch.nn.utils import prune

from edgeprune import export, models
from edgeprune import masks as masks_mod
from edgeprune.errors import ConfigError, UnsupportedModelError
from edgeprune.measure import PRUNABLE, count_macs, count_params
from edgeprune.surgery import dependency_graph, materialize, out_channel_group, width

SMALL = (3, 32, 32)  # in-house CIFAR models
TV = (3, 64, 64)  # torchvision models: small inputs keep the test quick


def _make(name: str):
    torch.manual_seed(0)
    shape = TV if name.startswith("tv:") else SMALL
    return randomize_bn(models.create(name, num_classes=10)), torch.randn(1, *shape), shape


def _coupled(model: nn.Module, name: str, x: torch.Tensor) -> list[str]:
    """The conv/linear layers whose output channels are tied to those of `name` (torch-pruning's group)."""
    dg = dependency_graph(model, x)
    layer = model.get_submodule(name)
    names = {m: n for n, m in model.named_modules()}
    group = out_channel_group(dg, layer, range(width(layer)), name)
    return [names[it.dep.target.module] for it in group
            if isinstance(it.dep.target.module, PRUNABLE) and dg.is_out_channel_pruning_fn(it.dep.handler)]


def _is_subsequence(new: torch.Tensor, old: torch.Tensor, dim: int) -> bool:
    """Whether `new` is `old` with some slices along `dim` left out, bit for bit and in order."""
    new_slices = [s.contiguous().numpy().tobytes() for s in new.detach().unbind(dim)]
    old_slices = [s.contiguous().numpy().tobytes() for s in old.detach().unbind(dim)]
    it = iter(old_slices)
    return all(any(s == o for o in it) for s in new_slices)


def _assert_kept_weights_identical(old: nn.Module, new: nn.Module, report) -> None:
    old_modules = dict(old.named_modules())
    for name, m in new.named_modules():
        o = old_modules[name]
        if isinstance(m, PRUNABLE) and m.weight.shape == o.weight.shape:
            assert torch.equal(m.weight, o.weight), name
        elif isinstance(m, PRUNABLE):
            rows = report.kept.get(name, range(width(o)))
            w = o.weight[list(rows)]
            assert _is_subsequence(m.weight, w, 1), name
            if m.bias is not None:
                assert torch.equal(m.bias, o.bias[list(rows)]), name
        elif isinstance(m, nn.BatchNorm2d):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                assert _is_subsequence(getattr(m, attr), getattr(o, attr), 0), f"{name}.{attr}"


# Layers to narrow in each model: one inside a block, and one whose channels are tied to others'
# (residual add, concatenation, multiplication, depthwise or grouped conv); every tied layer gets the decision.
CASES = {
    "resnet20": ["features.2.conv1.0", "features.4.conv2.0"],
    "resnet56": ["features.5.conv1.0", "features.20.conv2.0"],
    "vgg16": ["features.1.0", "features.11.0"],
    "mobilenetv2": ["features.5.layers.0.0", "features.6.layers.2.0"],
    "lenet5": ["features.0", "classifier.1"],
    "tv:resnet18": ["layer1.0.conv1", "layer2.1.conv2"],
    "tv:resnet50": ["layer1.0.conv2", "layer3.0.conv3"],
    "tv:mobilenet_v2": ["features.2.conv.0.0", "features.5.conv.2"],
    "tv:mobilenet_v3_small": ["features.4.block.0.0", "features.9.block.3.0"],
    "tv:efficientnet_b0": ["features.2.0.block.0.0", "features.3.1.block.3.0"],
    "tv:regnet_x_400mf": ["trunk_output.block1.block1-0.f.a.0", "trunk_output.block2.block2-1.f.c.0"],
    "tv:densenet121": ["features.denseblock1.denselayer1.conv1", "features.denseblock2.denselayer3.conv2"],
    "tv:vgg11_bn": ["features.4", "features.8"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_halving_layers_shrinks_every_architecture(name, tmp_path):
    model, x, shape = _make(name)
    original = copy.deepcopy(model)
    decided = list(dict.fromkeys(n for layer in CASES[name] for n in _coupled(model, layer, x)))
    # Plain chains have nothing tied; a densenet layer's slice of a concatenation has a single producer.
    assert len(decided) > len(CASES[name]) or name in ("vgg16", "lenet5", "tv:vgg11_bn", "tv:densenet121")
    # Every other channel: a grouped conv can lose the same positions in each of its groups.
    keep = {n: range(0, width(model.get_submodule(n)), 2) for n in decided}
    macs_before = count_macs(model, shape)[0]
    with torch.no_grad():
        y0 = model(x)

    report = materialize(model, keep, x)

    assert report.skipped == {}
    for n in decided:
        n_before = width(original.get_submodule(n))
        assert report.after[n] == width(model.get_submodule(n)) == (n_before + 1) // 2
        assert report.kept[n] == list(range(0, n_before, 2))
    assert report.params_after == count_params(model)[0] < report.params_before == count_params(original)[0]
    assert count_macs(model, shape)[0] < macs_before
    with torch.no_grad():
        assert model(x).shape == y0.shape
    _assert_kept_weights_identical(original, model, report)
    if report.params_after > 30e6:
        return  # vgg11_bn: writing half a gigabyte proves nothing more
    export.save_model(model, tmp_path / "m.pt")
    back = export.load_model(tmp_path / "m.pt").eval()
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "tv:densenet121"])
def test_narrowed_models_export_to_onnx(name):
    model, x, shape = _make(name)
    materialize(model, {n: [0, 2, 3] for n in CASES[name][:1]}, x)
    assert export.to_onnx_bytes(model, shape)  # to_onnx_bytes checks the export against ONNX Runtime


def test_plain_chain_loses_exactly_the_predicted_params_and_macs():
    model, x, shape = _make("vgg16")
    original = copy.deepcopy(model)
    conv, nxt = model.features[1][0], model.features[3][0]  # 64 -> 64 at 32x32, then 64 -> 128 at 16x16
    kept = [0, 5, 6, 9, 63]
    removed = 64 - len(kept)
    macs = count_macs(model, shape)[0]
    report = materialize(model, {"features.1.0": kept}, x)
    # conv rows (64*3*3 each), BN weight+bias, next conv's input columns (128*3*3 each)
    assert report.params_before - report.params_after == removed * (64 * 9 + 2 + 128 * 9)
    assert macs - count_macs(model, shape)[0] == removed * (64 * 9 * 32 * 32 + 128 * 9 * 16 * 16)
    assert torch.equal(conv.weight, original.features[1][0].weight[kept])
    assert torch.equal(nxt.weight, original.features[3][0].weight[:, kept])
    assert torch.equal(model.features[1][1].running_mean, original.features[1][1].running_mean[kept])


def test_a_coupled_layer_alone_keeps_its_channels_and_says_why():
    model, x, _ = _make("resnet20")
    report = materialize(model, {"features.1.conv2.0": [0, 1]}, x)
    assert model.features[1].conv2[0].out_channels == 16
    reason = report.skipped["features.1.conv2.0"]
    assert "residual add" in reason and "features.0.0" in reason and "keep those channels" in reason


def test_coupled_decisions_remove_only_what_all_of_them_remove():
    model, x, _ = _make("resnet20")
    stage = _coupled(model, "features.0.0", x)
    keep = {n: range(8) for n in stage}
    keep["features.2.conv2.0"] = range(0, 16, 2)  # removes the odd channels; the others remove 8..15
    report = materialize(model, keep, x)
    assert report.kept["features.0.0"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14]
    assert all(report.after[n] == 12 for n in stage)
    assert "features.2.conv2.0" in report.skipped["features.0.0"]


def test_model_outputs_and_ignored_layers_keep_their_outputs():
    model, x, _ = _make("lenet5")
    keep = {"classifier.5": [0, 1], "classifier.3": [0, 1], "classifier.1": range(60)}
    report = materialize(model, keep, x, ignored=["classifier.3"])
    assert model.classifier[5].out_features == 10 and model.classifier[3].out_features == 84
    assert "output" in report.skipped["classifier.5"] and "ignored" in report.skipped["classifier.3"]
    assert model.classifier[3].in_features == 60  # as in torch-pruning, an ignored layer's inputs may go


def test_round_to_keeps_multiples_and_refuses_wider_than_the_layer():
    model, x, _ = _make("resnet20")
    report = materialize(model, {"features.1.conv1.0": [0, 3, 7], "features.4.conv1.0": range(9)}, x, round_to=4)
    assert report.after == {"features.1.conv1.0": 4, "features.4.conv1.0": 12}
    assert report.kept["features.1.conv1.0"] == [0, 1, 3, 7]  # the lowest-index removed channel came back
    assert "round_to=4" in report.skipped["features.1.conv1.0"]
    with pytest.raises(ConfigError, match=r"round_to=32 .*features\.2\.conv1\.0.* 16 "):
        materialize(model, {"features.2.conv1.0": [0]}, x, round_to=32)


def test_removing_every_channel_keeps_one_and_reports_it():
    model, x, _ = _make("resnet20")
    report = materialize(model, {"features.1.conv1.0": []}, x)
    assert report.after["features.1.conv1.0"] == 1 and report.kept["features.1.conv1.0"] == [0]
    assert "every channel" in report.skipped["features.1.conv1.0"]


def test_grouped_convs_lose_a_position_only_in_every_group():
    model, x, _ = _make("tv:regnet_x_400mf")
    name = "trunk_output.block1.block1-0.f.a.0"  # feeds a conv with 2 groups of 16 channels
    report = materialize(model, {name: range(16)}, x)  # would empty the second group only
    assert model.get_submodule(name).out_channels == 32
    assert "grouped convolution" in report.skipped[name]


def test_bad_names_and_indices_are_config_errors():
    model, x, _ = _make("resnet20")
    with pytest.raises(ConfigError, match="features.1.conv1.0"):
        materialize(model, {"features.1.conv1.O": [0]}, x)
    with pytest.raises(ConfigError, match="BatchNorm2d"):
        materialize(model, {"features.1.conv1.1": [0]}, x)
    with pytest.raises(ConfigError, match=r"\[0, 16\)"):
        materialize(model, {"features.1.conv1.0": [16]}, x)


def test_masks_are_baked_before_surgery():
    model, x, _ = _make("lenet5")
    prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    zeros = int((model.features[0].weight[:3] == 0).sum())
    materialize(model, {"features.0": [0, 1, 2]}, x)
    assert not hasattr(model.features[0], "weight_mask")
    assert int((model.features[0].weight == 0).sum()) == zeros


def _untraceable() -> nn.Module:
    """ShuffleNetV2 with a user's own block class: its channel shuffle (view, transpose, view) stays, and
    torch-pruning cannot trace it (zoo_ops helps torchvision's own block only)."""
    from torchvision.models.shufflenetv2 import InvertedResidual

    class OwnBlock(InvertedResidual):
        pass

    model = models.create("tv:shufflenet_v2_x1_0", num_classes=10)
    for block in model.modules():
        if type(block) is InvertedResidual:
            block.__class__ = OwnBlock
    return model


def test_a_model_torch_pruning_cannot_trace_is_refused():
    model = _untraceable()
    with pytest.raises(UnsupportedModelError, match="ShuffleNetV2.*reshape"):
        materialize(model, {"conv1.0": [0, 1, 2]}, torch.randn(1, *TV))


class _Flip(nn.Module):
    """Reverses the channel order between two convs: torch-pruning takes the flip for an element-wise op."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.b(torch.flip(self.a(x), dims=[1])).mean((2, 3)))


def test_a_mistraced_group_is_left_unpruned_and_reported():
    torch.manual_seed(0)
    model, x = _Flip(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y0 = model(x)
    state = copy.deepcopy(model.state_dict())
    report = materialize(model, {"a": [0, 1, 2]}, x)
    assert "left unpruned" in report.skipped["a"] and model.a.out_channels == 8
    assert _same_state(model, state)
    with torch.no_grad():
        assert torch.equal(model(x), y0)


class _CatThenFlip(nn.Module):
    """Two convs concatenated into one consumer, then a flip torch-pruning does not see."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 6, 3), nn.Conv2d(12, 8, 1)
        self.d, self.fc = nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], 1).relu())
        return self.fc(self.d(torch.flip(y, dims=[1])).mean((2, 3)))


def test_one_mistraced_group_does_not_stop_the_others_even_behind_a_concatenation():
    # The check over all groups fails (the flip), so each group is redone alone: b's channels then sit at
    # shifted positions of c's input, since a's are gone.
    model, x, _ = _tiny(_CatThenFlip, (3, 8, 8))
    report = materialize(model, {"a": [0, 1, 2], "b": [3, 4, 5], "c": range(4)}, x)
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (3, 3, 6)
    assert model.c.out_channels == 8 and "left unpruned" in report.skipped["c"]
    assert set(report.skipped) == {"c"}


def test_the_report_counts_channels_asked_and_removed_and_strict_refuses_what_it_cannot_apply():
    model, x, state = _tiny(_CatThenFlip, (3, 8, 8))
    keep = {"a": [0, 1, 2], "b": [3, 4, 5], "c": range(4)}
    with pytest.raises(UnsupportedModelError, match=r"group of layer 'c' \(c\): torch-pruning's removal changed") as e:
        materialize(model, keep, x, strict=True)
    assert len(str(e.value).splitlines()) == 1 and _same_state(model, state)
    report = materialize(model, keep, x)
    assert (report.channels_asked, report.channels_removed) == (3 + 3 + 4, 3 + 3)


def _same_state(model: nn.Module, state: dict) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def test_a_refusal_leaves_the_model_exactly_as_it_was_masks_included():
    model = _untraceable()
    prune.l1_unstructured(model.conv1[0], "weight", amount=0.5)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError) as refusal:
        materialize(model, {"conv1.0": [0, 1, 2]}, torch.randn(1, *TV))
    assert len(str(refusal.value).splitlines()) == 1 and len(str(refusal.value)) < 600
    assert hasattr(model.conv1[0], "weight_mask") and _same_state(model, state)  # masks not baked either


def test_running_out_of_memory_is_not_reported_as_an_unsupported_model(monkeypatch):
    import torch_pruning as tp

    model, x, _ = _make("resnet20")
    state = copy.deepcopy(model.state_dict())

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", exhausted)
    with pytest.raises(MemoryError):
        materialize(model, {"features.1.conv1.0": [0]}, x)
    assert _same_state(model, state)


# Tiny models, one per pattern torchvision's zoo (and users) bring.


class _Aux(nn.Module):
    """An auxiliary head read only in training (googlenet, inception_v3)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.aux, self.head, self.aux_fc = nn.Conv2d(8, 4, 1), nn.Linear(8, 5), nn.Linear(4, 5)

    def forward(self, x):
        y = self.a(x).relu()
        out = self.head(self.b(y).mean((2, 3)))
        return (out, self.aux_fc(self.aux(y).mean((2, 3)))) if self.training else out


class _AuxNeedsSize(_Aux):
    """An auxiliary head whose 5x5 conv needs a 20-pixel input (inception_v3's needs 299 px)."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Conv2d(8, 4, 5)

    def forward(self, x):
        y = self.a(x).relu()
        out = self.head(self.b(y).mean((2, 3)))
        return (out, self.aux_fc(self.aux(F.avg_pool2d(y, 4)).mean((2, 3)))) if self.training else out


class _GroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gn, self.b = nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.Conv2d(16, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.b(self.gn(self.a(x)).relu()).mean((2, 3)))


class _LayerNormBlock(nn.Module):
    """ConvNeXt's block: depthwise conv, channels-last LayerNorm and MLP, residual add."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 8, 2, stride=2), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ln, self.up, self.down, self.fc = nn.LayerNorm(8), nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.down(nn.functional.gelu(self.up(self.ln(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.fc((x + y).mean((2, 3)))


class _CatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(3, 10, 3)
        self.c, self.d = nn.Conv2d(6, 4, 1), nn.Conv2d(10, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        p, q = torch.split(torch.cat([self.a(x), self.b(x)], 1).relu(), [6, 10], 1)  # sizes fixed in the code
        return self.fc(torch.cat([self.c(p), self.d(q)], 1).mean((2, 3)))


class _Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # ShuffleNet's channel shuffle
        return self.fc(self.b(y).mean((2, 3)))


class _Attention(nn.Module):
    """A pre-norm transformer block (ViT's encoder layer) on 5 tokens."""

    def __init__(self):
        super().__init__()
        self.embed, self.ln1, self.ln2 = nn.Linear(6, 16), nn.LayerNorm(16), nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.up, self.down, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return self.head((x + self.down(nn.functional.gelu(self.up(self.ln2(x))))).mean(1))


def _tiny(cls, shape):
    torch.manual_seed(0)
    model = cls()
    return model, torch.randn(1, *shape), copy.deepcopy(model.state_dict())


def _every_other(model: nn.Module) -> dict:
    return {n: range(0, width(m), 2) for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def test_an_auxiliary_head_reached_only_in_training_is_narrowed_with_the_trunk():
    model, x, _ = _tiny(_Aux, (3, 8, 8))
    report = materialize(model, _every_other(model), x)
    assert report.after == {"a": 4, "b": 4, "aux": 2, "head": 5, "aux_fc": 5}
    assert model.aux.in_channels == 4 and model.aux_fc.in_features == 2
    out, aux = model.train()(torch.randn(2, 3, 8, 8))
    assert out.shape == aux.shape == (2, 5)


def test_layers_a_too_small_example_keeps_off_the_trace_are_named_in_a_warning():
    model, x, _ = _tiny(_AuxNeedsSize, (3, 8, 8))
    with pytest.warns(UserWarning, match=r"2 layer\(s\) are not on the traced forward \(aux, aux_fc\).*"
                                         r"could not run on the example input: .*Kernel size.*pass an example"):
        report = materialize(model, {"a": [0, 2, 4, 6]}, x)
    assert report.unreached == ["aux", "aux_fc"] and model.a.out_channels == 4 and model.aux.in_channels == 8
    model, x, _ = _tiny(_AuxNeedsSize, (3, 20, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = materialize(model, {"a": [0, 2, 4, 6]}, x)
    assert report.unreached == [] and model.aux.in_channels == 4
    out, aux = model.train()(torch.randn(2, 3, 20, 20))
    assert out.shape == aux.shape == (2, 5)


def test_groupnorm_groups_each_lose_as_many_channels():
    model, x, _ = _tiny(_GroupNorm, (3, 8, 8))
    keep = {"a": [0, 4, 5, 8, 9, 12, 13]}  # removes 3 channels of group 0, 2 of each other: each may lose 2
    report = materialize(model, keep, x)
    assert report.kept["a"] == [0, 1, 4, 5, 8, 9, 12, 13]  # the lowest-index removed channel came back
    assert model.gn.num_channels == 8 and model.gn.weight.shape == (8,) and model.b.in_channels == 8
    assert "each group of gn" in report.skipped["a"]
    assert model(x).shape == (1, 3)


def test_a_layernorm_block_prunes_its_channels_and_mlp():
    model, x, _ = _tiny(_LayerNormBlock, (3, 8, 8))
    report = materialize(model, _every_other(model), x)
    assert report.after == {"stem": 4, "dw": 4, "up": 16, "down": 4, "fc": 3}
    assert model.ln.normalized_shape == (4,) and model.ln.weight.shape == (4,)
    assert model(x).shape == model.train()(x).shape == (1, 3)


def test_multi_head_attention_loses_the_same_number_of_channels_in_every_head():
    model, x, _ = _tiny(_Attention, (5, 6))
    keep = _every_other(model)
    keep["embed"] = keep["down"] = [0, 1, 2, 4, 6, 8, 10, 12, 14]  # head 0 would lose 1, the others 2
    report = materialize(model, keep, x)
    assert model.attn.embed_dim == 12 and model.attn.num_heads == 4 and model.attn.head_dim == 3
    assert report.kept["embed"] == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]  # each head lost one channel
    assert "each head of attn" in report.skipped["embed"] and "out_proj" in report.skipped["attn.out_proj"]
    assert report.after["up"] == 16 and model(x).shape == (1, 3)


@pytest.mark.parametrize(("cls", "layer"), [(_CatSplit, "a"), (_Shuffle, "a")])
def test_channels_torch_pruning_maps_wrongly_stay_and_the_rest_is_pruned(cls, layer):
    model, x, _ = _tiny(cls, (3, 8, 8))
    width_before = width(model.get_submodule(layer))
    report = materialize(model, _every_other(model), x)
    assert width(model.get_submodule(layer)) == width_before
    assert "left" in report.skipped[layer] and len(report.skipped[layer]) < 1000
    assert model(x).shape == (1, 3)
    if cls is _Shuffle:
        assert report.after["b"] == 4  # after the shuffle: a plain conv


def test_a_torchvision_vision_transformer_narrows_its_residual_stream():
    torchvision = pytest.importorskip("torchvision")
    from edgeprune.structure import group_keep

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    report = materialize(model, group_keep(model, x, 0.5), x)
    assert "conv_proj" not in report.skipped
    assert model.hidden_dim == model.conv_proj.out_channels == 8 and model.class_token.shape[-1] == 8
    assert model.encoder.layers[0].self_attention.embed_dim == 8 and model(x).shape == (1, 3)


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "mobilenetv2", "tv:googlenet"])
def test_masks_come_back_narrowed_exactly_as_their_weights(name):
    torch.manual_seed(0)
    shape = (3, 32, 32) if name != "tv:googlenet" else (3, 64, 64)
    model = models.create(name, 10, shape[0])
    names = list(masks_mod.prunable(model))
    masks_mod.apply(model, {n: (torch.rand_like(model.get_parameter(n)) > 0.3).float() for n in names})
    before = {n: m.weight_mask.clone() for n, m, _ in masks_mod.masked_modules(model)}
    report = materialize(model, _every_other(model), torch.randn(1, *shape))
    assert report.channels_removed > 0 and set(report.masks) == {f"{n}.weight" for n in before}
    for key, mask in report.masks.items():
        weight = model.get_parameter(key)
        assert mask.shape == weight.shape
        assert torch.equal(mask.bool(), weight != 0)  # the baked zeros are the mask's (random weights are never 0)
    first = next(n for n in before if n in report.kept)  # the first layer: inputs untouched, rows = kept channels
    assert torch.equal(report.masks[f"{first}.weight"], before[first][report.kept[first]])


@pytest.mark.parametrize("v2", [False, True])
def test_a_torchvision_swin_prunes_its_mlps_and_keeps_its_window_attention_whole(v2):
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    from edgeprune.structure import group_keep

    torch.manual_seed(0)
    kind = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if v2 else {}
    model = swin.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                 window_size=[4, 4], num_classes=3, **kind).eval()
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    hidden = "features.1.0.mlp.0"
    report = materialize(model, _every_other(model), x)
    assert report.after[hidden] == 32 and model.get_submodule("features.1.0.mlp.3").in_features == 32
    attention = "ShiftedWindowAttentionV2" if v2 else "ShiftedWindowAttention"
    assert f"coupled with {attention} features.1.0.attn" in report.skipped["features.0.0"]
    assert "inside features.1.0.attn" in report.skipped["features.1.0.attn.qkv"]
    assert report.unreached == [] and model.features[0][0].out_channels == 16
    assert report.params_after < report.params_before and model(x).shape == expected.shape == (1, 3)
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    model.eval()
    keep = group_keep(model, x, 0.5)  # only the MLPs' hidden channels: the rest would be refused
    assert set(keep) == {f"features.{s}.{b}.mlp.0" for s in (1, 3) for b in (0, 1)}
    report = materialize(model, keep, x)
    assert report.channels_removed == report.channels_asked == 16 + 16 + 32 + 32 and report.skipped == {}


def _tiny_shufflenet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 64], num_classes=3).eval()
    randomize_bn(model)
    return model, torch.randn(2, 3, 32, 32)


def test_a_torchvision_shufflenet_prunes_through_its_channel_shuffles(tmp_path):
    from edgeprune import zoo_ops
    from edgeprune.structure import group_keep

    model, x = _tiny_shufflenet()
    expected = model(x)
    zoo_ops.prepare(model)
    assert torch.equal(model(x), expected)  # a shuffle as an index and a split at the branch's width: the same
    report = materialize(model, group_keep(model, x[:1], 0.5), x[:1])
    assert report.channels_removed == report.channels_asked > 0 and report.skipped == {}
    block = model.stage3[1]  # a stride-1 block: half its input passes through, the rest feeds its branch
    assert block.branch2[0].in_channels < 16 and block.shuffle.index.numel() < 32
    assert sorted(block.shuffle.index.tolist()) == list(range(block.shuffle.in_channels))  # still a permutation
    assert report.params_after < 0.6 * report.params_before and model(x).shape == (2, 3)
    model.train()(x).sum().backward()
    torch.save(model, tmp_path / "m.pt")  # the prunable block pickles by name
    again = torch.load(tmp_path / "m.pt", weights_only=False).eval()
    assert torch.equal(again(x), model.eval()(x))


def test_a_narrowed_shufflenet_saves_loads_and_exports(tmp_path):
    from edgeprune.structure import group_keep

    torch.manual_seed(0)
    model = models.create("tv:shufflenet_v2_x0_5", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    materialize(model, group_keep(model, x[:1], 0.3), x[:1])
    export.save_model(model, tmp_path / "m.pt")  # state_dict + spec, no pickled code
    again = export.load_model(tmp_path / "m.pt").eval()
    assert torch.equal(again(x), model(x)) and again.stage2[1].shuffle.in_channels < 48
    ort = pytest.importorskip("onnxruntime")
    export.to_onnx(again, tmp_path / "m.onnx", (3, 32, 32))  # checked in ONNX Runtime on export
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), model(x[:1]), atol=1e-4)


@pytest.mark.parametrize("in_first", [True, False])
def test_a_shuffle_narrows_the_same_whichever_side_torch_pruning_prunes_first(in_first):
    from edgeprune.zoo_ops import SHUFFLE, ChannelShuffle

    shuffle = ChannelShuffle(8, 2)  # output j reads input (j % 2) * 4 + j // 2: 0 4 1 5 2 6 3 7
    x = torch.arange(8.0).view(1, 8, 1, 1)
    gone_in, gone_out = [1, 6], [2, 5]  # input 1 sits at output 2, input 6 at output 5
    steps = [(SHUFFLE.prune_in_channels, gone_in), (SHUFFLE.prune_out_channels, gone_out)]
    for prune_fn, idxs in steps if in_first else steps[::-1]:
        prune_fn(shuffle, idxs)
    kept_inputs = x[:, [0, 2, 3, 4, 5, 7]]
    assert shuffle(kept_inputs).flatten().tolist() == [0, 4, 5, 2, 3, 7]


def test_a_torchvision_maxvit_prunes_its_convolutions_and_mlps_around_whole_attention():
    maxvit = pytest.importorskip("torchvision.models.maxvit")
    from edgeprune.structure import group_keep

    torch.manual_seed(0)
    model = maxvit.MaxVit(input_size=(64, 64), stem_channels=8, partition_size=2, block_channels=[16, 32],
                          block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    report = materialize(model, group_keep(model, x, 0.5), x)
    assert report.channels_removed == report.channels_asked > 0 and report.skipped == {}
    layer = model.blocks[0].layers[0]
    assert layer.layers.window_attention.mlp_layer[1].out_features == 32  # 4 x 16, halved
    assert layer.layers.MBconv.layers.conv_b[0].out_channels < 64  # the inverted bottleneck's inner width
    assert model(x).shape == (1, 3)
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    report = materialize(model, _every_other(model), x)  # the residual stream: refused, and said why
    stream = "blocks.0.layers.0.layers.MBconv.proj.1"  # the block's residual stream, through its attention
    assert "an attention whose heads are cut from its input width" in report.skipped[stream]


def test_groups_planned_with_index_maps_computed_once_are_the_same_and_other_graphs_are_mapped(monkeypatch):
    import torch_pruning as tp

    from edgeprune.surgery import mapped_once

    model, x, _ = _tiny(_CatSplit, (3, 8, 8))
    other, _, _ = _tiny(_CatSplit, (3, 8, 8))
    dg, dg_other = dependency_graph(model, x), dependency_graph(other, x)

    def items(graph, m):
        return [(it.dep.target.name, str(it.dep.handler), list(it.idxs))
                for it in out_channel_group(graph, m.b, [1, 3, 5], "b")]

    expected = items(dg, model)
    maps, calls = tp.dependency.index_mapping, []
    original = maps.update_index_mapping
    monkeypatch.setattr(maps, "update_index_mapping", lambda graph: calls.append(graph) or original(graph))
    with mapped_once(dg):
        assert items(dg, model) == expected  # a concatenation and a split: the maps build_dependency made
        items(dg_other, other)
    assert calls == [dg_other]
    items(dg, model)
    assert calls == [dg_other, dg]  # mapped as usual again after the block
