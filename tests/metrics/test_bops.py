"""BOPs, MACs and weight memory against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hydra_utils import compose_config
from torch import nn

from qnnrun.build import build_quantized_model, example_input
from qnnrun.data import dataset_info
from qnnrun.metrics.bops import layer_costs, totals
from qnnrun.models import build_model
from qnnrun.quant.layers import QuantConv2d, QuantLinear
from qnnrun.quant.quantizers import UniformQuantizer


def _quant_net() -> nn.Module:
    conv = QuantConv2d(3, 8, 3, padding=1, bias=False, weight_quant=UniformQuantizer(2, channels=8),
                       input_quant=UniformQuantizer(4, signed=None, range_mode="ema"))
    depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
    linear = QuantLinear(8 * 4 * 4, 10, weight_quant=UniformQuantizer(3, channels=10),
                         input_quant=UniformQuantizer(3, signed=None, range_mode="ema"))
    return nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU(), depthwise, nn.Flatten(), linear)


def test_hand_computed_costs() -> None:
    net = _quant_net()
    costs = layer_costs(net, torch.zeros(1, 3, 8, 8))
    conv, depthwise, linear = costs
    # conv: n=3, m=8, k=9, 8x8 outputs, bw=2, ba=4
    assert conv.macs == 8 * 3 * 9 * 64
    assert conv.bops == pytest.approx(8 * 3 * 9 * (4 * 2 + 4 + 2 + math.log2(27)) * 64)
    assert conv.bit_macs == 8 * 3 * 9 * 64 * 8
    # depthwise float conv: n = 1 input channel per group, 4x4 outputs, 32x32 bits
    assert (depthwise.in_per_group, depthwise.output_positions) == (1, 16)
    assert depthwise.bops == pytest.approx(8 * 1 * 9 * (32 * 32 + 64 + math.log2(9)) * 16)
    # linear: n = fan-in 128, m = 10, one position
    assert linear.bops == pytest.approx(10 * 128 * (9 + 6 + 7) * 1)
    total = totals(costs)
    # Weight memory: conv/linear weights only (the linear bias and the BatchNorm are not counted).
    weights = 8 * 27 * 2 + 8 * 9 * 32 + 10 * 128 * 3
    assert total["weight_memory_bits"] == weights
    assert total["compression"] == pytest.approx((8 * 27 + 8 * 9 + 10 * 128) * 32 / weights)


@pytest.mark.parametrize("method", ["lbl", "fbf", "nbn"])
def test_folding_while_training_or_before_reports_the_same_size(method: str) -> None:
    """nbn/fbf/lbl give their convs biases and fold BatchNorm while they train; ste with
    quant.fold_bn=true folds it before. The deployed networks are the same, and so are their costs."""
    def cost(*overrides: str) -> dict[str, float]:
        cfg = compose_config(["model=resnet20", "dataset=cifar10", "bits=4", *overrides])
        info = dataset_info(cfg.dataset)
        model, _ = build_quantized_model(cfg, info, torch.device("cpu"))
        return totals(layer_costs(model, example_input(info, torch.device("cpu"), 1)))

    progressive, folded = cost(f"method={method}"), cost("method=ste", "quant.fold_bn=true")
    assert progressive == folded
    assert folded["compression"] == pytest.approx(8.0, rel=0.1)  # W4 with the first/last layers at 8 bits


def test_resnet18_imagenet_macs() -> None:
    model = build_model({"name": "resnet18", "stem": "imagenet"}, in_channels=3, num_classes=1000, image_size=224)
    total = totals(layer_costs(model, torch.zeros(1, 3, 224, 224)))
    assert round(total["macs"] / 1e9, 2) == 1.81
    assert total["compression"] == pytest.approx(1.0)
