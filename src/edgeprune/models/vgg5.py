"""VGG-5, the model FedAdapt and FedFly split between device and edge: conv 32, pool, conv 64, pool, conv 64, FC 128,
FC classes. Its top level is a chain of those seven layers, so every position between two of them is a valid split
(edgeprune.federated.split)."""

from torch import nn

from edgeprune.models.layers import init_weights
from edgeprune.models.registry import register


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


@register("vgg5")
def vgg5(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Sequential:
    """`image_size` fixes the first FC's width: 64 x (image_size // 4)^2 (4096 for CIFAR's 32, 3136 for 28). Maps of
    another size are averaged to that side first, as LeNet-5 here does, so one model takes any input."""
    side = image_size // 4
    model = nn.Sequential(
        _conv(in_channels, 32), nn.MaxPool2d(2), _conv(32, 64), nn.MaxPool2d(2), _conv(64, 64),
        nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU()),
        nn.Linear(128, num_classes),
    )
    init_weights(model)
    return model
