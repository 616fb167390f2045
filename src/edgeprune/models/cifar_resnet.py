"""ResNet-20/32/44/56/110 for CIFAR (He et al. 2016, section 4.2), with projection shortcuts (option B)."""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.models.layers import PooledClassifier, conv_bn
from edgeprune.models.registry import register


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers; the shortcut is added before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3, activation=None)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(PooledClassifier):
    """3×3 conv (16), then three stages of (depth - 2) / 6 blocks with 16, 32, 64 channels."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        layers: list[nn.Module] = [conv_bn(in_channels, 16, 3)]
        width = 16
        for stage, stage_width in enumerate((16, 32, 64)):
            for block in range((depth - 2) // 6):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(width, stage_width, stride))
                width = stage_width
        super().__init__(nn.Sequential(*layers), width, num_classes)


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(partial(CifarResNet, _depth))
