"""torchvision ResNet-18/34/50 and MobileNetV2, with a stem for small (CIFAR-sized) images.

The ImageNet stems downsample by 4 (ResNet) or 2 (MobileNetV2) before the first block, which
leaves too little spatial resolution on 32x32 inputs; the CIFAR stems remove that early
downsampling, as is usual when these networks are trained on CIFAR.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from qnnrun.errors import QnnrunError

_STEMS = ("auto", "cifar", "imagenet")
# "auto" picks the CIFAR stem up to this input size.
_SMALL_IMAGE_SIZE = 64


def _resolve_stem(stem: str, image_size: int) -> str:
    if stem not in _STEMS:
        raise QnnrunError(f"unknown stem '{stem}': valid stems are {', '.join(_STEMS)}")
    if stem == "auto":
        return "cifar" if image_size <= _SMALL_IMAGE_SIZE else "imagenet"
    return stem


def _conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    # The same initialization torchvision gives the convs it builds itself.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _resnet(
    factory: Callable[..., torchvision.models.ResNet],
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    stem: str,
) -> torchvision.models.ResNet:
    model = factory(weights=None, num_classes=num_classes)
    if _resolve_stem(stem, image_size) == "cifar":
        model.conv1 = _conv(in_channels, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _conv(in_channels, 64, kernel_size=7, stride=2, padding=3)
    return model


def resnet18(
    *, in_channels: int, num_classes: int, image_size: int, stem: str = "auto"
) -> torchvision.models.ResNet:
    """torchvision ResNet-18: ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images; picks the stem when ``stem="auto"``.
        stem: ``"imagenet"`` (7x7 stride-2 conv + max pool), ``"cifar"`` (3x3 stride-1 conv,
            no max pool) or ``"auto"`` (cifar for ``image_size <= 64``).
    """
    return _resnet(
        torchvision.models.resnet18,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        stem=stem,
    )


def resnet34(
    *, in_channels: int, num_classes: int, image_size: int, stem: str = "auto"
) -> torchvision.models.ResNet:
    """torchvision ResNet-34: ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    Arguments as for :func:`resnet18`.
    """
    return _resnet(
        torchvision.models.resnet34,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        stem=stem,
    )


def resnet50(
    *, in_channels: int, num_classes: int, image_size: int, stem: str = "auto"
) -> torchvision.models.ResNet:
    """torchvision ResNet-50: ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    Arguments as for :func:`resnet18`.
    """
    return _resnet(
        torchvision.models.resnet50,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        stem=stem,
    )


def mobilenet_v2(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width_mult: float = 1.0,
    stem: str = "auto",
) -> torchvision.models.MobileNetV2:
    """torchvision MobileNetV2: ``[B, C, H, W]`` -> ``[B, num_classes]`` logits.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images; picks the stem when ``stem="auto"``.
        width_mult: Multiplier on every layer's channel count.
        stem: ``"imagenet"`` (total stride 32), ``"cifar"`` (the first conv and the first
            strided inverted-residual block get stride 1, total stride 8, so 32x32 inputs end
            at 4x4) or ``"auto"`` (cifar for ``image_size <= 64``).
    """
    model = torchvision.models.mobilenet_v2(
        weights=None, num_classes=num_classes, width_mult=width_mult
    )
    if in_channels != 3:
        first = model.features[0][0]
        model.features[0][0] = _conv(
            in_channels, first.out_channels, kernel_size=3, stride=first.stride[0], padding=1
        )
    if _resolve_stem(stem, image_size) == "cifar":
        model.features[0][0].stride = (1, 1)
        # Only the depthwise conv of an inverted-residual block strides.
        depthwise = next(
            m
            for m in model.features[1:].modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.stride == (2, 2)
        )
        depthwise.stride = (1, 1)
    return model
