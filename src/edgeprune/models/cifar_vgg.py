"""VGG-11/13/16/19 with batch norm for CIFAR: one Linear(512, classes) head, as open_lth's cifar_vgg."""

from functools import partial

from torch import nn

from edgeprune.models.layers import PooledClassifier, conv_bn
from edgeprune.models.registry import register

# Output channels of each 3×3 conv, "M" a 2×2 max pool: configurations A, B, D, E of Simonyan & Zisserman 2015.
CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(PooledClassifier):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        layers: list[nn.Module] = []
        for out_channels in CONFIGS[depth]:
            if out_channels == "M":
                # ceil_mode keeps 28×28 inputs alive through all five pools: 28→14→7→4→2→1.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers.append(conv_bn(in_channels, out_channels, 3))
                in_channels = out_channels
        super().__init__(nn.Sequential(*layers), in_channels, num_classes)


for _depth in CONFIGS:
    register(f"vgg{_depth}")(partial(CifarVGG, _depth))
