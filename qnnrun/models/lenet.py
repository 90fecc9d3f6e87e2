"""LeNet-5 (LeCun et al. 1998), sized for 8x8, 28x28 and 32x32 inputs."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    # padding=2 keeps the spatial size, so the 8x8 sklearn digits survive both pools.
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    # ceil_mode keeps an odd size such as 7 (MNIST after one pool) from losing its last row.
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
    return layers


def _fc_block(in_features: int, out_features: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers.append(nn.ReLU(inplace=True))
    return layers


class LeNet5(nn.Module):
    """LeNet-5: conv5x5(6) -> pool -> conv5x5(16) -> pool -> FC120 -> FC84 -> FC num_classes.

    Input ``[B, in_channels, image_size, image_size]``, output ``[B, num_classes]`` logits.
    Both convs are padded and both pools round up, so the feature map after the second pool is
    ``ceil(image_size / 4)`` on a side (2 for 8x8, 7 for 28x28, 8 for 32x32).

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.
        batch_norm: Put a BatchNorm after every conv and hidden Linear.
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, image_size: int, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 6, batch_norm), *_conv_block(6, 16, batch_norm)
        )
        side = -(-image_size // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *_fc_block(16 * side * side, 120, batch_norm),
            *_fc_block(120, 84, batch_norm),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        return self.classifier(self.features(x))
