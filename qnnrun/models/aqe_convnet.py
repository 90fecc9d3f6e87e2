"""The 6-conv + 3-FC CIFAR ConvNet on which Chen et al. (IEEE JSTSP 2020) evaluate AQE / MINW-Net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from qnnrun.errors import QnnrunError


class AQEConvNet(nn.Module):
    """Six 3x3 convs in three pairs, a 2x2 max pool after each pair, then three linear layers.

    ``conv(c1)-conv(c2)-MP2-conv(c3)-conv(c4)-MP2-conv(c5)-conv(c6)-MP2-FC(f1)-FC(f2)-FC(classes)``,
    each hidden conv/linear followed by BatchNorm and ReLU (the binary methods swap ReLU for
    hard-tanh). Pooling comes before BatchNorm and the activation, as in BinaryNet: a max pool
    after a binarizing activation would saturate on +-1 values. The paper's models A-D differ in
    widths: set them with ``channels`` and ``fc_widths`` (or scale both with ``width``).

    Input ``[B, in_channels, image_size, image_size]`` with ``image_size`` >= 8, output
    ``[B, num_classes]`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.
        channels: Output channels of the six convs.
        fc_widths: Widths of the two hidden linear layers.
        width: Multiplier on ``channels`` and ``fc_widths``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (128, 128, 256, 256, 512, 512),
        fc_widths: Sequence[int] = (1024, 1024),
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if len(channels) != 6:
            raise QnnrunError(f"model.channels={list(channels)} is not valid: expected 6 conv widths")
        if len(fc_widths) != 2:
            raise QnnrunError(f"model.fc_widths={list(fc_widths)} is not valid: expected 2 hidden widths")
        side = image_size // 8
        if side < 1:
            raise QnnrunError(f"aqe_convnet needs image_size >= 8, got {image_size}")
        layers: list[nn.Module] = []
        previous = in_channels
        for index, base in enumerate(channels):
            out = max(1, round(base * width))
            layers.append(nn.Conv2d(previous, out, 3, padding=1, bias=False))
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            previous = out
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        features = previous * side * side
        for base in fc_widths:
            out = max(1, round(base * width))
            head += [nn.Linear(features, out, bias=False), nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            features = out
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        return self.classifier(self.features(x))
