"""MobileNetV2 (Sandler et al. 2018) for 32×32 inputs.

As in kuangliu/pytorch-cifar, the stem conv and the first stride-2 stage use stride 1, so a 32×32 image is
downsampled 8× (to 4×4) rather than 32×. The blocks are the paper's: no shortcut where the shape changes.
"""

import torch
from torch import nn

from edgeprune.errors import ConfigError
from edgeprune.models.layers import PooledClassifier, conv_bn
from edgeprune.models.registry import register

# (expansion t, output channels c, blocks n, stride s) of each stage: the paper's Table 2, second stage s=1.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _round_channels(channels: float, divisor: int = 8) -> int:
    """Nearest multiple of 8, never more than 10 % below `channels` (the reference implementation's rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class InvertedResidual(nn.Module):
    """1×1 expansion, 3×3 depthwise, linear 1×1 projection; identity shortcut when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [conv_bn(in_channels, hidden, 1, activation=nn.ReLU6)]
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            conv_bn(hidden, out_channels, 1, activation=None),
        ]
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


@register("mobilenetv2")
class CifarMobileNetV2(PooledClassifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> None:
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult!r}")
        width = _round_channels(32 * width_mult)
        layers: list[nn.Module] = [conv_bn(in_channels, width, 3, activation=nn.ReLU6)]
        for expansion, channels, blocks, stride in STAGES:
            out_channels = _round_channels(channels * width_mult)
            for block in range(blocks):
                layers.append(InvertedResidual(width, out_channels, stride if block == 0 else 1, expansion))
                width = out_channels
        # The last conv is never narrowed: the paper keeps 1280 channels for width multipliers below 1.
        last = _round_channels(1280 * max(1.0, width_mult))
        layers.append(conv_bn(width, last, 1, activation=nn.ReLU6))
        super().__init__(nn.Sequential(*layers), last, num_classes)
