"""VGG-Small, the CIFAR-10 network of BinaryConnect / BinaryNet (Courbariaux et al. 2015, 2016)."""

from __future__ import annotations

import torch
from torch import nn

from qnnrun.errors import QnnrunError

# Output channels of the six 3x3 convs; a max pool follows every second one.
_CONV_CHANNELS = (128, 128, 256, 256, 512, 512)


class VGGSmall(nn.Module):
    """2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-num_classes with BatchNorm and ReLU.

    Input ``[B, in_channels, image_size, image_size]`` with ``image_size`` a multiple of 8,
    output ``[B, num_classes]`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.
        width: Multiplier on the conv channel counts.
        fc_width: Width of the two hidden fully connected layers.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        width: float = 1.0,
        fc_width: int = 1024,
    ) -> None:
        super().__init__()
        side = image_size // 8
        if side < 1:
            raise QnnrunError(f"vgg_small needs image_size >= 8, got {image_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for index, base in enumerate(_CONV_CHANNELS):
            out_channels = max(1, round(base * width))
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=False))
            # As in BinaryNet, pool before BatchNorm and the activation: pooling after a
            # binarizing activation would take the max over +-1 values and saturate.
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, fc_width, bias=False),
            nn.BatchNorm1d(fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(fc_width, fc_width, bias=False),
            nn.BatchNorm1d(fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(fc_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        return self.classifier(self.features(x))
