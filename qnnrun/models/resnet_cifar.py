"""CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (2016), section 4.2.

Three stages of ``n`` basic blocks at widths ``w, 2w, 4w`` (``w = 16`` in the paper) on
32x32, 16x16 and 8x8 feature maps, giving ``6n + 2`` weighted layers: ResNet-20/32/56 use
``n = 3/5/9``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnnrun.errors import QnnrunError

_SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Parameter-free shortcut (option A): subsample by ``stride`` and zero-pad new channels.

    Input ``[B, C_in, H, W]``, output ``[B, C_out, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # Split the padding across both ends of the channel axis, as in the reference
        # implementations; with no parameters its placement does not change what is learnable.
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``[B, C_in, H, W]`` and pad it to ``C_out`` channels."""
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, ReLU after the sum.

    Input ``[B, in_channels, H, W]``, output ``[B, out_channels, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C_in, H, W]`` to ``[B, C_out, H / stride, W / stride]``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stem, three stages, global average pool, FC.

    Input ``[B, in_channels, H, W]`` (32x32 in the paper; any size works), output
    ``[B, num_classes]`` logits.

    Args:
        blocks_per_stage: ``n``, the number of basic blocks in each of the three stages.
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        shortcut: ``"A"`` for the parameter-free zero-padding shortcut, ``"B"`` for a 1x1
            conv + BN projection, used only where the shape changes.
        width: Channels of the stem and first stage; the later stages double it.
    """

    def __init__(
        self,
        *,
        blocks_per_stage: int,
        in_channels: int,
        num_classes: int,
        shortcut: str = "A",
        width: int = 16,
    ) -> None:
        super().__init__()
        if shortcut not in _SHORTCUTS:
            raise QnnrunError(
                f"unknown shortcut '{shortcut}': valid shortcuts are {', '.join(_SHORTCUTS)}"
            )
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            blocks: list[nn.Module] = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, stage_width, stride, shortcut))
                channels = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` images to ``[B, num_classes]`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet20(
    *, in_channels: int, num_classes: int, image_size: int, shortcut: str = "A", width: int = 16
) -> CifarResNet:
    """ResNet-20 (n = 3, 0.27M parameters): ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    ``image_size`` is accepted for a uniform builder interface; the network is size-agnostic.
    """
    return CifarResNet(
        blocks_per_stage=3,
        in_channels=in_channels,
        num_classes=num_classes,
        shortcut=shortcut,
        width=width,
    )


def resnet32(
    *, in_channels: int, num_classes: int, image_size: int, shortcut: str = "A", width: int = 16
) -> CifarResNet:
    """ResNet-32 (n = 5, 0.46M parameters): ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    ``image_size`` is accepted for a uniform builder interface; the network is size-agnostic.
    """
    return CifarResNet(
        blocks_per_stage=5,
        in_channels=in_channels,
        num_classes=num_classes,
        shortcut=shortcut,
        width=width,
    )


def resnet56(
    *, in_channels: int, num_classes: int, image_size: int, shortcut: str = "A", width: int = 16
) -> CifarResNet:
    """ResNet-56 (n = 9, 0.85M parameters): ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    ``image_size`` is accepted for a uniform builder interface; the network is size-agnostic.
    """
    return CifarResNet(
        blocks_per_stage=9,
        in_channels=in_channels,
        num_classes=num_classes,
        shortcut=shortcut,
        width=width,
    )
