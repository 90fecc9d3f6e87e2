"""``method=bnn`` and ``method=qnn``: binarized / quantized neural networks (Hubara, Courbariaux et al.).

Weights are ``sign`` (BNN, QNN at 1 bit) or QNN's ``k``-bit linear levels of real-valued latent
weights that are clipped to ``[-1, 1]`` after every optimizer step. Every ReLU becomes a hard-tanh
(BinaryNet's ``htanh``), whose output the next layer quantizes: ``sign`` (BNN), or QNN's ``k``-bit
linear ``round(x / step) * step`` or logarithmic ``sign(x) * 2^round(log2|x|)`` levels. All
quantizers use the clipped STE ``g * 1{|x| <= 1}``. Layer policy as in the papers: the first
layer's weights are quantized and the image input stays float; the last layer is quantized too
and followed by a BatchNorm on the logits (``method.output_bn``), as in BinaryNet's code.

:class:`LatentWeightMethod` holds what BNN, QNN and AQE share: the ReLU swap, weight clipping,
the output BatchNorm and the BinaryNet options (Glorot-scaled learning rates, squared-hinge loss,
shift-based BatchNorm, low-bit gradients).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_bool, check_choice, check_grad_bits, check_number
from qnnrun.errors import QnnrunError
from qnnrun.methods.base import Method
from qnnrun.quant import functional as Q
from qnnrun.quant.convert import FLOAT_BITS, LAYER_NAME_ATTR, forward_order
from qnnrun.quant.layers import ShiftBatchNorm, ShiftBatchNorm1d, ShiftBatchNorm2d, quant_layers
from qnnrun.quant.quantizers import LevelQuantizer


LOSSES = ("ce", "squared_hinge")
ACT_QUANTS = ("linear", "log")
LATENT_INITS = ("uniform", "keep")


class SquaredHinge(nn.Module):
    """BinaryNet's loss: ``mean((max(0, 1 - t * y))^2)`` over batch and classes, with targets
    ``t = +1`` for the true class and ``-1`` elsewhere. Logits [B, C], labels [B] int64."""

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        targets = 2.0 * F.one_hot(labels, logits.shape[1]).to(logits.dtype) - 1.0
        return torch.clamp(1.0 - targets * logits, min=0.0).square().mean()


def _replace_modules(model: nn.Module, make: Any) -> None:
    """Replace every submodule ``m`` for which ``make(m)`` returns a module by that module."""
    for name, module in list(model.named_modules()):
        replacement = make(module)
        if replacement is not None and name:
            model.set_submodule(name, replacement)


class _HardTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, low: float, high: float) -> Tensor:
        out = x.clamp(low, high)
        ctx.save_for_backward(out)
        ctx.low, ctx.high = low, high
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (out,) = ctx.saved_tensors
        # low < x < high exactly where low < out < high: the same mask as from the input.
        return torch.ops.aten.hardtanh_backward(grad, out, ctx.low, ctx.high), None, None


class HardTanh(nn.Hardtanh):
    """``nn.Hardtanh`` that saves its output for backward instead of its input.

    The gradient is the same (it passes where ``min_val < x < max_val``, which is where the output
    lies strictly inside too). The next quantized layer's input is that output, so with
    ``trainer.recompute_quant`` the two share one saved tensor, as a ReLU and the next layer do.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        return _HardTanh.apply(x, self.min_val, self.max_val)


def _hardtanh_for_relu(module: nn.Module) -> nn.Module | None:
    return HardTanh() if isinstance(module, nn.ReLU) else None


def _shift_batchnorm(module: nn.Module) -> nn.Module | None:
    if isinstance(module, ShiftBatchNorm) or not isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return None
    cls = ShiftBatchNorm1d if isinstance(module, nn.BatchNorm1d) else ShiftBatchNorm2d
    shifted = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  device=module.running_mean.device if module.running_mean is not None else None)
    shifted.load_state_dict(module.state_dict())
    return shifted


def glorot_lr_scale(weight: Tensor) -> float:
    """BinaryNet's per-layer learning-rate factor ``1 / sqrt(1.5 / (fan_in + fan_out))``.

    For a conv weight [C_out, C_in, kh, kw]: ``fan_in = C_in * kh * kw``, ``fan_out = C_out * kh * kw``.
    """
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))


def latent_weights(model: nn.Module) -> list[Tensor]:
    """The latent weights the binary methods clip: those of layers with a weight quantizer."""
    return [layer.weight for _, layer in quant_layers(model) if layer.weight_quant is not None]


class LatentWeightMethod(Method):
    """Shared base of BNN, QNN and AQE: scale-free quantizers on clipped latent weights.

    Options (``method.*``): ``loss`` (``ce`` | ``squared_hinge``), ``glorot_lr`` (Glorot-scaled
    learning rate per quantized layer), ``shift_bn`` (shift-based BatchNorm), ``grad_bits``
    (quantize the gradient at every quantized layer's output to that many bits; 32 = off),
    ``output_bn`` (a BatchNorm on the logits), ``latent_init`` (``uniform``: latent weights of the
    quantized layers drawn from ``U(-1, 1)`` as BinaryNet does, unless ``init_from`` loaded them;
    ``keep``: the model's own initialisation), ``bn_eps`` (the epsilon of every BatchNorm, BinaryNet's
    1e-4 for bnn / qnn; ``null`` keeps the model's).
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.loss = check_choice("method.loss", cfg.method.loss, LOSSES)
        self.glorot_lr = check_bool("method.glorot_lr", cfg.method.glorot_lr)
        self.shift_bn = check_bool("method.shift_bn", cfg.method.shift_bn)
        self.output_bn = check_bool("method.output_bn", cfg.method.output_bn)
        # 2 bits at least: QNN's symmetric codes [-(2^(b-1) - 1), 2^(b-1) - 1] leave only 0 at 1 bit
        self.grad_bits = check_grad_bits(cfg.method.grad_bits, 2)
        bn_eps = cfg.method.bn_eps
        self.bn_eps = None if bn_eps is None else check_number("method.bn_eps", bn_eps, 0)
        self.latent_init = check_choice("method.latent_init", cfg.method.latent_init, LATENT_INITS)
        self._clipped: list[Tensor] | None = None

    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        """ReLU -> hard-tanh (when activations are quantized), quantized layers, output BatchNorm,
        shift-based BatchNorm and gradient quantization, as configured."""
        if not self.quantizes:
            return model
        if self.act_bits != FLOAT_BITS:
            # sign() of a ReLU output would be +1 everywhere: the binary nets use hard-tanh.
            _replace_modules(model, _hardtanh_for_relu)
        last_name = forward_order(model, example_input)[-1]
        model = super().build(model, example_input)
        if self.latent_init == "uniform" and not self.cfg.get("init_from"):
            # BinaryNet's init (H = 1): the latent weights span the whole clipping range, so that
            # k-bit levels (a 2-bit grid steps by 0.5) do not round a default-initialised layer to 0.
            with torch.no_grad():
                for weight in latent_weights(model):
                    weight.uniform_(-1.0, 1.0)
        if self.output_bn:
            last = model.get_submodule(last_name)
            norm = nn.BatchNorm2d if isinstance(last, nn.Conv2d) else nn.BatchNorm1d
            features = last.out_channels if isinstance(last, nn.Conv2d) else last.out_features
            setattr(last, LAYER_NAME_ATTR, last_name)  # to rules and tables still the layer it was
            model.set_submodule(last_name, nn.Sequential(last, norm(features, device=last.weight.device)))
        if self.bn_eps is not None:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eps = self.bn_eps
        if self.shift_bn:
            _replace_modules(model, _shift_batchnorm)
        if self.grad_bits != FLOAT_BITS:
            for _, layer in quant_layers(model):
                layer.register_forward_hook(self._quantize_output_gradient)
        return model

    def _quantize_output_gradient(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return Q.gradient_quantizer(output, self.grad_bits)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Clip the latent weights of every layer with quantized weights to ``[-1, 1]``."""
        if self._clipped is None:
            self._clipped = latent_weights(model)
        with torch.no_grad():
            for weight in self._clipped:
                weight.clamp_(-1.0, 1.0)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The base groups, or with ``glorot_lr`` one group per quantized weight at
        ``lr * glorot_lr_scale(weight)`` after a first group of everything else at ``lr``."""
        if not self.glorot_lr:
            return super().param_groups(model, weight_decay)
        lr = float(self.cfg.optim.lr)
        scaled = latent_weights(model)
        scaled_ids = {id(w) for w in scaled}
        groups = [{**group, "params": [p for p in group["params"] if id(p) not in scaled_ids], "lr": lr}
                  for group in super().param_groups(model, weight_decay)]
        groups += [{"params": [w], "weight_decay": weight_decay, "lr": lr * glorot_lr_scale(w)} for w in scaled]
        return [group for group in groups if group["params"]]

    def criterion(self, label_smoothing: float) -> nn.Module:
        if self.loss == "ce":
            return super().criterion(label_smoothing)
        if label_smoothing:
            raise QnnrunError(f"trainer.label_smoothing={label_smoothing} is not valid with "
                              f"method.loss=squared_hinge: valid is 0 (or use method.loss=ce)")
        return SquaredHinge()


class BinarizedNet(LatentWeightMethod):
    """``method=bnn``: W1/A1 whatever ``bits`` says (``bits`` is ignored, as ``method=fp`` ignores it)."""

    name = "bnn"
    layer_widths = (1,)
    fixed_bits = 1

    def weight_quantizer(self, layer: nn.Module, bits: int) -> LevelQuantizer:
        return LevelQuantizer("sign", 1)

    def input_quantizer(self, layer: nn.Module, bits: int) -> LevelQuantizer:
        return LevelQuantizer("sign", 1)


class QuantizedNet(LatentWeightMethod):
    """``method=qnn``: ``sign`` at 1 bit, else ``k``-bit linear weights; activations ``sign`` at 1 bit,
    else linear or logarithmic (``method.act_quant``) ``k``-bit levels."""

    name = "qnn"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.act_quant = check_choice("method.act_quant", cfg.method.act_quant, ACT_QUANTS)

    def weight_quantizer(self, layer: nn.Module, bits: int) -> LevelQuantizer:
        return LevelQuantizer("sign", 1) if bits == 1 else LevelQuantizer("linear", bits)

    def input_quantizer(self, layer: nn.Module, bits: int) -> LevelQuantizer:
        if bits == 1:
            return LevelQuantizer("sign", 1)
        return LevelQuantizer("pow2" if self.act_quant == "log" else "linear", bits)

