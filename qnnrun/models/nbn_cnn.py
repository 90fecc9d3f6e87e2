"""A small CIFAR CNN of the kind the Neuron-by-Neuron paper (Sher et al. 2023) trained."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NBNCNN(nn.Module):
    """conv5x5(w0) -> pool -> conv3x3(w1) -> pool -> conv3x3(w2) -> pool -> FC(fc_width) -> FC(classes).

    Every conv is padded to keep its size and followed by BatchNorm (optional) and ReLU; every
    pool halves the size rounding up, so the last feature map is ``ceil(image_size / 8)`` on a
    side (4 for 32x32 CIFAR, 1 for the 8x8 digits). With the defaults on CIFAR-10 it has about
    57 thousand parameters.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.
        widths: Output channels of the three convs.
        fc_width: Width of the hidden fully connected layer.
        batch_norm: BatchNorm after every conv and the hidden fully connected layer.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        widths: Sequence[int] = (16, 32, 64),
        fc_width: int = 32,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths={list(widths)}: nbn_cnn has three convs")
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            kernel = 5 if index == 0 else 3
            layers.append(nn.Conv2d(channels, width, kernel, padding=kernel // 2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = -(-image_size // 8)
        hidden: list[nn.Module] = [nn.Flatten(), nn.Linear(channels * side * side, fc_width, bias=not batch_norm)]
        if batch_norm:
            hidden.append(nn.BatchNorm1d(fc_width))
        self.classifier = nn.Sequential(*hidden, nn.ReLU(inplace=True), nn.Linear(fc_width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        return self.classifier(self.features(x))
