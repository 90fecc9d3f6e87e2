"""The 6-conv + 3-FC CIFAR ConvNet on which Chen et al. (IEEE JSTSP 2020) evaluate AQE / MINW-Net."""

from __future__ import annotations

from collections.abc import Sequence

from qnnrun.models.vgg import ConvPairNet, scaled


def aqe_convnet(*, in_channels: int, num_classes: int, image_size: int,
                channels: Sequence[int] = (128, 128, 256, 256, 512, 512),
                fc_widths: Sequence[int] = (1024, 1024), width_mult: float = 1.0) -> ConvPairNet:
    """The AQE paper's ConvNet: VGG-Small's topology (:class:`ConvPairNet`) with configurable widths.

    The paper's models A-D differ in widths: set them with ``channels`` (six convs) and
    ``fc_widths`` (two hidden linear layers); ``width_mult`` multiplies both. Input
    ``[B, C, H, W]`` with ``H = W >= 8``, output ``[B, num_classes]`` logits.
    """
    return ConvPairNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                       channels=scaled(channels, width_mult), fc_widths=scaled(fc_widths, width_mult),
                       name="aqe_convnet")
