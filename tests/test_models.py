import json
import textwrap

import pytest
import torch
import torchvision
from torch import nn

from edgeprune.errors import ConfigError, UnsupportedModelError
from edgeprune.models import ModelSpec, create, list_models

IN_HOUSE = [name for name in list_models(task="classify") if not name.startswith("tv:")]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A user module with two factories, importable as `user_factories`."""
    (tmp_path / "user_factories.py").write_text(
        textwrap.dedent("""
            from torch import nn

            def tiny(num_classes, in_channels, width=4):
                return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(width, num_classes))

            def rgb_only(num_classes):
                return tiny(num_classes, 3)

            def not_a_model(num_classes, in_channels):
                return 42
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("resnet20", 0.26e6, 0.28e6),
        ("resnet56", 0.84e6, 0.87e6),
        ("vgg16", 14.6e6, 14.8e6),
        ("mobilenetv2", 2.1e6, 2.3e6),
    ],
)
def test_parameter_counts_match_the_papers(name, low, high):
    assert low <= n_params(create(name, num_classes=10, in_channels=3)) <= high


@pytest.mark.parametrize("name", IN_HOUSE)
@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
@torch.no_grad()
def test_in_house_models_take_mnist_and_cifar_shapes(name, in_channels, size):
    model = create(name, num_classes=7, in_channels=in_channels).eval()
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small"])
@torch.no_grad()
def test_torchvision_models_adapt_to_in_channels(name):
    model = create(name, num_classes=7, in_channels=1).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)


def test_torchvision_model_without_input_conv_is_unsupported(monkeypatch):
    monkeypatch.setattr(
        torchvision.models, "get_model", lambda name, weights, num_classes: nn.Sequential(nn.Linear(4, num_classes))
    )
    with pytest.raises(UnsupportedModelError, match="tv:resnet18"):
        create("tv:resnet18", in_channels=1)


def test_list_models_names_in_house_and_torchvision_models():
    names = list_models()
    assert {"resnet20", "vgg16", "mobilenetv2", "lenet5", "tv:resnet18", "tv:efficientnet_b0"} <= set(names)
    assert not any(name.startswith("tv:fasterrcnn") for name in names)


@pytest.mark.parametrize("name, close", [("resnet21", "resnet20"), ("tv:resnet19", "tv:resnet18")])
def test_unknown_name_suggests_close_matches(name, close):
    with pytest.raises(ConfigError, match=close):
        create(name)


@pytest.mark.parametrize("kwargs, named", [({"num_classes": 0}, "num_classes"), ({"in_channels": -1}, "in_channels")])
def test_bad_sizes_are_config_errors(kwargs, named):
    with pytest.raises(ConfigError, match=f"{named}.*{list(kwargs.values())[0]}"):
        create("resnet20", **kwargs)


@pytest.mark.parametrize(
    "name, kwargs", [("resnet20", {"width_mult": 2}), ("mobilenetv2", {"width_mult": 0}), ("tv:resnet18", {"nope": 1})]
)
def test_bad_kwargs_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError):
        create(name, **kwargs)


@torch.no_grad()
def test_user_factory(factories):
    model = create("user_factories:tiny", num_classes=5, in_channels=2, width=6)
    assert model(torch.randn(2, 2, 8, 8)).shape == (2, 5)
    assert create("user_factories:rgb_only", num_classes=5)(torch.randn(2, 3, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize(
    "name, in_channels, message",
    [
        ("user_factories:rgb_only", 1, "in_channels"),
        ("user_factories:missing", 3, "user_factories:missing"),
        ("no_such_package.nets:tiny", 3, "PYTHONPATH"),
        ("user_factories:not_a_model", 3, "not a torch.nn.Module"),
    ],
)
def test_user_factory_errors(factories, name, in_channels, message):
    with pytest.raises(ConfigError, match=message):
        create(name, in_channels=in_channels)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet20", {}),
        ("mobilenetv2", {"width_mult": 0.5, "num_classes": 100}),
        ("tv:resnet18", {"in_channels": 1}),
        ("user_factories:tiny", {"width": 3}),
    ],
)
def test_spec_rebuilds_the_architecture(factories, name, kwargs):
    model = create(name, **kwargs)
    saved = json.loads(json.dumps(model.edgeprune_spec.to_dict()))  # plain data, no pickled code
    assert ModelSpec.from_dict(saved) == model.edgeprune_spec
    rebuilt = create(**saved)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_vgg5_is_fedadapts_seven_layer_chain():
    model = create("vgg5", num_classes=10, in_channels=3)
    assert len(model) == 7
    assert model[5][2].in_features == 4096  # FedAdapt's FC 4096 -> 128 at CIFAR's 32 px
    assert create("vgg5", in_channels=1, image_size=28)[5][2].in_features == 64 * 7 * 7
