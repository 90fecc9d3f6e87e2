"""VGG-style CIFAR networks: six 3x3 convs in three pairs, a max pool after each pair, then two
hidden linear layers. VGG-Small (BinaryConnect / BinaryNet, Courbariaux et al. 2015, 2016) is the
reference instance; the AQE paper's ConvNet (``aqe_convnet``) is the same topology with its own widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from qnnrun.errors import QnnrunError

# Output channels of VGG-Small's six 3x3 convs; a max pool follows every second one.
_CONV_CHANNELS = (128, 128, 256, 256, 512, 512)


def scaled(widths: Sequence[int], factor: float) -> list[int]:
    """``widths`` multiplied by ``factor``, rounded, at least 1 each."""
    return [max(1, round(w * factor)) for w in widths]


class ConvPairNet(nn.Module):
    """``conv(c1)-conv(c2)-MP2-conv(c3)-conv(c4)-MP2-conv(c5)-conv(c6)-MP2-FC(f1)-FC(f2)-FC(classes)``.

    Every hidden conv/linear is followed by BatchNorm and ReLU (the binary methods swap ReLU for
    hard-tanh); hidden layers have no bias (BatchNorm cancels it). As in BinaryNet, pooling comes
    before BatchNorm and the activation: pooling after a binarizing activation would take the max
    over +-1 values and saturate.

    Input ``[B, in_channels, image_size, image_size]`` with ``image_size >= 8``, output
    ``[B, num_classes]`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.
        channels: Output channels of the six convs.
        fc_widths: Widths of the two hidden linear layers.
        name: The model's registry name, for error messages.
    """

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, channels: Sequence[int],
                 fc_widths: Sequence[int], name: str) -> None:
        super().__init__()
        if len(channels) != 6:
            raise QnnrunError(f"model.channels={list(channels)} is not valid: expected 6 conv widths")
        if len(fc_widths) != 2:
            raise QnnrunError(f"model.fc_widths={list(fc_widths)} is not valid: expected 2 hidden widths")
        side = image_size // 8
        if side < 1:
            raise QnnrunError(f"{name} needs image_size >= 8, got {image_size}")
        layers: list[nn.Module] = []
        previous = in_channels
        for index, out in enumerate(channels):
            layers.append(nn.Conv2d(previous, out, 3, padding=1, bias=False))
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            previous = out
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        features = previous * side * side
        for out in fc_widths:
            head += [nn.Linear(features, out, bias=False), nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            features = out
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        return self.classifier(self.features(x))


def vgg_small(*, in_channels: int, num_classes: int, image_size: int, width_mult: float = 1.0,
              fc_width: int = 1024) -> ConvPairNet:
    """VGG-Small, 2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-num_classes.

    ``width_mult`` multiplies the conv channel counts; ``fc_width`` is the width of both hidden
    linear layers. Input ``[B, C, H, W]`` with ``H = W >= 8``, output ``[B, num_classes]`` logits.
    """
    return ConvPairNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                       channels=scaled(_CONV_CHANNELS, width_mult), fc_widths=(fc_width, fc_width),
                       name="vgg_small")
