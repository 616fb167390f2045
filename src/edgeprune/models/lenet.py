"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling in place of tanh and trainable subsampling."""

import torch
from torch import nn

from edgeprune.models.layers import init_weights
from edgeprune.models.registry import register


@register("lenet5")
class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # padding=2 shows a 28×28 digit to the net as LeNet's original 32×32 input.
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # Already 5×5 for 28×28 inputs; other sizes (6×6 from 32×32) are averaged to the 5×5 fc1 expects.
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
