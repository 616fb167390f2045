"""TinyDet: a small CenterNet-style detector (Zhou et al. 2019, "Objects as Points") for the ROMA stream.

One output tensor at stride 4: `num_classes` heat-map logits (one peak per object centre), then 4 box
channels (log width, log height in output cells; centre offset x, y within the cell). Decoding (sigmoid,
peak picking, boxes) runs outside the graph, in `edgeprune.detection.decode`, so the exported ONNX holds
only convolutions and the same weights run at any input size: the detector family of ROMA is this one
network at several input sizes (a YOLO-style input-size family). The input is the frame in [0, 1]; with
`input_size` set, the graph first resizes it (bilinear), so all members take the same frame.
"""

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import ConfigError
from edgeprune.formats import BOX_CHANNELS
from edgeprune.models.layers import conv_bn, init_weights
from edgeprune.models.registry import register


@register("tinydet", task="detect")
class TinyDet(nn.Module):
    """Encoder to stride 16, then two top-down steps (nearest upsampling + lateral 1x1) back to stride 4,
    so a 48 px object at 128 px input still falls inside one cell's receptive field."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 input_size: int | None = None) -> None:
        super().__init__()
        if input_size is not None and (input_size < 16 or input_size % 16):
            raise ConfigError(f"tinydet input_size must be a multiple of 16 (its deepest stride), got {input_size}")
        # The frame is resized to input_size inside the graph: every member of the family takes the same frame.
        self.input_size = input_size
        w = width
        self.stem = nn.Sequential(conv_bn(in_channels, w, 3, 2), conv_bn(w, w, 3))  # stride 2
        self.c4 = nn.Sequential(conv_bn(w, 2 * w, 3, 2), conv_bn(2 * w, 2 * w, 3))  # stride 4
        self.c8 = nn.Sequential(conv_bn(2 * w, 4 * w, 3, 2), conv_bn(4 * w, 4 * w, 3))  # stride 8
        self.c16 = nn.Sequential(conv_bn(4 * w, 4 * w, 3, 2), conv_bn(4 * w, 4 * w, 3))  # stride 16
        self.lat8 = conv_bn(4 * w, 4 * w, 1)
        self.lat4 = conv_bn(2 * w, 4 * w, 1)
        self.up8 = conv_bn(4 * w, 4 * w, 3)
        self.up4 = conv_bn(4 * w, 3 * w, 3)
        self.head = nn.Sequential(conv_bn(3 * w, 3 * w, 3), nn.Conv2d(3 * w, num_classes + BOX_CHANNELS, 1))
        init_weights(self)
        # CenterNet's prior: heat-map logits start near sigmoid = 0.01, so the focal loss is not swamped by
        # the background cells at the first steps.
        nn.init.constant_(self.head[-1].bias[:num_classes], -4.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        s4 = self.c4(self.stem(x))
        s8 = self.c8(s4)
        s16 = self.c16(s8)
        y = self.up8(F.interpolate(s16, size=s8.shape[-2:], mode="nearest") + self.lat8(s8))
        y = self.up4(F.interpolate(y, size=s4.shape[-2:], mode="nearest") + self.lat4(s4))
        return self.head(y)
