"""Multi-layer perceptron over flattened images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected classifier: Flatten -> [Linear -> BN -> ReLU -> Dropout] * N -> Linear.

    Input ``[B, in_channels, image_size, image_size]``, output ``[B, num_classes]`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.
        widths: Width of each of the N hidden layers, input side first.
        batch_norm: Put a BatchNorm1d after every hidden Linear.
        dropout: Dropout probability after every hidden ReLU.
        input_dropout: Dropout probability on the flattened input.

    The options are checked by :func:`qnnrun.models.build_model` (:func:`~qnnrun.models.check_model_option`),
    which builds every model.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        widths: Sequence[int] = (256, 256),
        batch_norm: bool = True,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        features = in_channels * image_size * image_size
        for width in widths:
            # A bias in front of BatchNorm is cancelled by its mean subtraction.
            layers.append(nn.Linear(features, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        return self.classifier(self.features(x))
