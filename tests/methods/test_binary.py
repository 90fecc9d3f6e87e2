"""BNN, QNN and AQE: exact numerics of their quantizers and options, and real short trainings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config
from torch import nn

from qnnrun.build import build_quantized_model, example_input
from qnnrun.data import dataset_info
from qnnrun.data.loader import TensorLoader
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.methods import build_method
from qnnrun.methods.bnn import SquaredHinge, glorot_lr_scale
from qnnrun.models import build_model
from qnnrun.optim import ShiftAdaMax, build_optimizer, lr_factor
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import ShiftBatchNorm1d, ShiftBatchNorm2d, quant_layers
from qnnrun.quant.quantizers import AsymptoticQuantizer, LevelQuantizer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _is_power_of_two(x: torch.Tensor) -> bool:
    exponent = torch.log2(x.abs())
    return bool(torch.equal(exponent, torch.round(exponent)))


# ---- pure functions -------------------------------------------------------------------------

def test_clipped_ste_returns_the_value_and_masks_the_scaled_gradient() -> None:
    x = torch.tensor([-1.5, -1.0, -0.2, 0.0, 0.7, 1.0, 1.01], requires_grad=True)
    value = torch.full_like(x, 3.0)
    y = Q.clipped_ste(x, value, clip=1.0, grad_scale=0.6)
    assert torch.equal(y, value)
    y.backward(torch.full_like(x, 2.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 1.2, 1.2, 1.2, 1.2, 1.2, 0.0]))


def test_binary_levels_sign_of_zero() -> None:
    x = torch.tensor([-0.3, 0.0, 0.2, -0.0])
    assert torch.equal(Q.binary_levels(x), torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def test_ternary_levels_with_the_twn_threshold() -> None:
    x = torch.tensor([-1.0, -0.4, 0.1, 0.3, 0.5, 0.7])
    delta = Q.ternary_threshold(x)  # 0.7 * mean(1, .4, .1, .3, .5, .7) = 0.7 * 0.5 = 0.35
    assert delta.item() == pytest.approx(0.35)
    assert torch.equal(Q.ternary_levels(x, delta), torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]))


def test_pow2_levels_three_bits_hand_values() -> None:
    # 3 bits: {0, +-1/4, +-1/2, +-1}; log-domain rounding, zero below 1/8.
    x = torch.tensor([-2.0, -0.7, -0.3, -0.1, 0.0, 0.12, 0.13, 0.2, 0.36, 0.75, 1.0, 5.0])
    expected = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 1.0, 1.0, 1.0])
    assert torch.equal(Q.pow2_levels(x, 3), expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_pow2_levels_are_zero_or_signed_powers_of_two_within_the_code(bits: int) -> None:
    x = torch.randn(20_000).sign() * torch.exp2(torch.empty(20_000).uniform_(-20, 2))  # log-uniform |x|
    out = Q.pow2_levels(x, bits)
    magnitudes = Q.pow2_magnitudes(bits)
    allowed = {0.0} | {s * 2.0 ** -p for p in range(magnitudes) for s in (1, -1)}
    assert set(out.unique().tolist()) == allowed  # every level used, nothing else
    assert len(allowed) <= 2**bits


def test_linear_levels_match_qnn_reference() -> None:
    x = torch.linspace(-1.3, 1.3, 1001)
    for bits in (2, 3, 4):
        m = 2 ** (bits - 1)
        reference = torch.clamp(torch.round(x * m) / m, -1.0, 1.0 - 1.0 / m)
        assert torch.equal(Q.linear_levels(x, bits), reference)
        assert Q.linear_levels(x, bits).unique().numel() == 2**bits
    assert torch.equal(Q.linear_levels(torch.tensor([0.3, 0.2, -0.8]), 2), torch.tensor([0.5, 0.0, -1.0]))


def test_power_of_two_hand_values_and_every_output_is_a_power_of_two() -> None:
    x = torch.tensor([3.0, -5.0, 0.7, 0.35, 1.0, 100.0])
    assert torch.equal(Q.power_of_two(x), torch.tensor([4.0, -4.0, 0.5, 0.25, 1.0, 128.0]))
    assert _is_power_of_two(Q.power_of_two(torch.randn(1000) * 10))
    assert Q.power_of_two(torch.tensor([0.0])).item() == 0.0


def test_quantize_gradient_is_on_the_grid_and_unbiased() -> None:
    grad = torch.randn(200) * 0.01
    bits = 6
    levels = 2 ** (bits - 1) - 1
    scale = grad.abs().max() / levels
    floor = Q.quantize_gradient(grad, bits, torch.zeros_like(grad))
    assert torch.allclose(floor, torch.floor(grad / scale) * scale)
    codes = Q.quantize_gradient(grad, bits, torch.rand_like(grad)) / scale
    assert torch.allclose(codes, torch.round(codes), atol=1e-4) and codes.abs().max() <= levels + 1e-4
    mean = torch.stack([Q.quantize_gradient(grad, bits, torch.rand_like(grad)) for _ in range(2000)]).mean(0)
    assert torch.allclose(mean, grad, atol=0.05 * scale.item() + 1e-9)


def test_gradient_quantizer_is_identity_forward_and_quantizes_backward() -> None:
    x = torch.randn(50, requires_grad=True)
    y = Q.gradient_quantizer(x, 3)
    assert torch.equal(y, x)
    upstream = torch.randn(50)
    y.backward(upstream)
    codes = x.grad / (upstream.abs().max() / 3)
    assert torch.allclose(codes, torch.round(codes), atol=1e-5)
    assert set(torch.round(codes).unique().tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}


# ---- quantizer modules ----------------------------------------------------------------------

def test_level_quantizer_sign_gradient_mask() -> None:
    quant = LevelQuantizer("sign", 1)
    x = torch.tensor([-2.0, -0.5, 0.0, 0.9, 1.5], requires_grad=True)
    y = quant(x)
    assert torch.equal(y, torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_ternary_activation_threshold_is_fixed_in_evaluation() -> None:
    quant = LevelQuantizer("ternary", 2, threshold_momentum=0.5)
    quant.train()
    quant(torch.tensor([1.0, -1.0]))  # threshold 0.7
    quant(torch.tensor([0.5, -0.5]))  # 0.7 + 0.5 * (0.35 - 0.7) = 0.525
    assert quant.threshold.item() == pytest.approx(0.525)
    quant.eval()
    # In a batch of its own 0.6 would set the threshold 0.42 and map to 1; the stored one maps it to 0.
    assert torch.equal(quant(torch.tensor([0.6, 0.5])), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_aqe_mixture_forward_gradient_and_evaluation(alpha: float) -> None:
    quant = AsymptoticQuantizer("sign", 1, alpha)
    x = torch.tensor([-1.5, -0.4, 0.0, 0.25, 1.0, 2.0], requires_grad=True)
    h = torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    y = quant(x)
    assert torch.allclose(y, alpha * h + (1 - alpha) * x.detach())
    y.backward(torch.full_like(x, 3.0))
    assert torch.allclose(x.grad, 2 * alpha * 3.0 * torch.tensor([0.0, 1, 1, 1, 1, 0]))
    quant.eval()
    assert torch.equal(quant(x), h)


def test_aqe_levels_by_bit_width() -> None:
    cfg = compose_config(["method=aqe", "bits.w=3", "bits.a=2"])
    method = build_method(cfg)
    layer = nn.Linear(4, 4)
    weight_quant, input_quant = method.weight_quantizer(layer, 3), method.input_quantizer(layer, 2)
    assert (weight_quant.kind, input_quant.kind) == ("pow2", "ternary")
    assert method.weight_quantizer(layer, 1).kind == "sign"
    weight_quant.eval()
    assert torch.equal(weight_quant(torch.tensor([0.9, -0.3, 0.05])), torch.tensor([1.0, -0.25, 0.0]))


# ---- methods: policy, clipping, options -------------------------------------------------------

def _built(*overrides: str) -> tuple[nn.Module, object, object]:
    cfg = compose_config(list(overrides))
    info = dataset_info(cfg.dataset)
    model, method = build_quantized_model(cfg, info, torch.device("cpu"))
    return model, method, cfg


def test_bnn_layer_policy_hardtanh_and_output_batchnorm() -> None:
    model, method, _ = _built("method=bnn", "bits=4")
    assert (method.weight_bits, method.act_bits) == (1, 1)  # bnn ignores bits
    layers = quant_layers(model)
    assert len(layers) == 3
    first, last = layers[0][1], layers[-1][1]
    assert first.input_quant is None and first.weight_quant.kind == "sign"  # image input float
    assert last.input_quant.kind == "sign" and last.weight_quant.kind == "sign"
    assert isinstance(model.classifier, nn.Sequential) and isinstance(model.classifier[1], nn.BatchNorm1d)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.Hardtanh) for m in model.modules()) == 2
    assert model(example_input(dataset_info(compose_config([]).dataset), torch.device("cpu"))).shape == (2, 10)


def test_dropout_acts_on_the_binary_activations_not_before_the_sign() -> None:
    # BinaryNet: sign, then dropout, then the product. Dropout in front of the sign would turn
    # each dropped unit into sign(0) = +1 and leave no zero in the layer's input.
    model, _, cfg = _built("method=bnn", "model.widths=[64,64]", "model.dropout=0.5", "model.input_dropout=0.2")
    info = dataset_info(cfg.dataset)
    float_model = build_model(cfg.model, in_channels=info.in_channels, num_classes=info.num_classes,
                              image_size=info.image_size)
    def feature_keys(net: nn.Module) -> set[str]:
        return {key for key in net.state_dict() if key.startswith("features.")}
    assert feature_keys(model) >= feature_keys(float_model)  # the float model's keys, for init_from
    second = quant_layers(model)[1][1]
    assert isinstance(second.input_dropout, nn.Dropout) and second.input_dropout.p == 0.5
    assert quant_layers(model)[0][1].input_dropout is None  # float image input: dropout stays in front
    in_features = [m for m in model.features if isinstance(m, nn.Dropout)]
    assert [m.p for m in in_features] == [0.2]  # the hidden ones moved, not copied
    x = torch.rand(256, 64) * 2 - 1  # hard-tanh outputs
    model.train()
    values = second.quantize_input(x)
    assert set(values.unique().tolist()) == {-2.0, 0.0, 2.0}  # +-1 / (1 - p) kept, 0 dropped
    assert 0.4 < (values == 0).float().mean().item() < 0.6
    model.eval()
    assert set(second.quantize_input(x).unique().tolist()) == {-1.0, 1.0}


def test_qnn_activation_quantizers() -> None:
    _, linear, _ = _built("method=qnn", "bits.w=1", "bits.a=3")
    _, log, _ = _built("method=qnn", "bits=2", "method.act_quant=log")
    layer = nn.Linear(2, 2)
    assert linear.input_quantizer(layer, 3).kind == "linear" and linear.weight_quantizer(layer, 1).kind == "sign"
    assert log.input_quantizer(layer, 2).kind == "pow2" and log.weight_quantizer(layer, 2).kind == "linear"


@pytest.mark.parametrize("name", ["bnn", "qnn", "aqe"])
def test_latent_weights_are_clipped_after_the_optimizer_step(name: str) -> None:
    model, method, cfg = _built(f"method={name}", "bits=2", "optim.lr=50")
    optimizer = build_optimizer(cfg.optim, method.param_groups(model, 0.0))
    images = torch.randn(16, 1, 8, 8)
    nn.functional.cross_entropy(model(images), torch.randint(0, 10, (16,))).backward()
    optimizer.step()
    weights = [layer.weight for _, layer in quant_layers(model)]
    assert max(w.abs().max().item() for w in weights) > 1  # the step left [-1, 1] ...
    method.after_optimizer_step(model, 0)
    assert max(w.abs().max().item() for w in weights) == 1.0  # ... and clipping brought it back


def test_glorot_learning_rates() -> None:
    model, method, cfg = _built("method=bnn", "optim=adam")
    groups = method.param_groups(model, 0.0)
    assert groups[0]["lr"] == cfg.optim.lr
    first = quant_layers(model)[0][1].weight  # [256, 64]
    (group,) = [g for g in groups if any(p is first for p in g["params"])]
    assert group["lr"] == pytest.approx(cfg.optim.lr / math.sqrt(1.5 / (64 + 256)))
    assert glorot_lr_scale(torch.zeros(8, 4, 3, 3)) == pytest.approx(1 / math.sqrt(1.5 / (36 + 72)))
    counted = sum(len(g["params"]) for g in groups)
    assert counted == len([p for p in model.parameters() if p.requires_grad])


def test_aqe_default_has_no_glorot_scaling_and_bnn_has_it() -> None:
    """The AQE paper trains with plain Adam (no per-layer rate); BinaryNet (cifar10.py, W_LR_scale = "Glorot")
    scales each binary layer's rate by 1 / sqrt(1.5 / (fan_in + fan_out))."""
    aqe_model, aqe, cfg = _built("method=aqe", "bits=2", "optim=adam")
    assert aqe.glorot_lr is False
    assert {group["lr"] for group in build_optimizer(cfg.optim, aqe.param_groups(aqe_model, 0.0)).param_groups} == {
        cfg.optim.lr}
    _, on, _ = _built("method=aqe", "bits=2", "method.glorot_lr=true")
    assert on.glorot_lr is True  # still available
    bnn_model, bnn, cfg = _built("method=bnn", "optim=adam")
    assert bnn.glorot_lr is True
    expected = sorted([cfg.optim.lr] + [cfg.optim.lr * glorot_lr_scale(w) for w in
                                        (layer.weight for _, layer in quant_layers(bnn_model))])
    assert sorted(group["lr"] for group in bnn.param_groups(bnn_model, 0.0)) == expected
    _, qnn, _ = _built("method=qnn", "bits=2")
    assert qnn.glorot_lr is True


@pytest.mark.parametrize("name,eps", [("bnn", 1e-4), ("qnn", 1e-4), ("aqe", 1e-5)])
def test_batchnorm_epsilon_is_binarynets_for_bnn_and_qnn(name: str, eps: float) -> None:
    """BinaryNet's Train-time/cifar10.py: every BatchNormLayer has epsilon = 1e-4 (alpha = .1 is
    PyTorch's momentum 0.1 already). AQE keeps the model's (PyTorch's 1e-5)."""
    model, _, _ = _built(f"method={name}", "bits=2")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3  # the MLP's two hidden BatchNorms and the output BatchNorm
    assert all(m.eps == eps and m.momentum == 0.1 for m in norms)
    model, _, _ = _built(f"method={name}", "bits=2", "method.bn_eps=1e-3", "method.shift_bn=true")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, ShiftBatchNorm1d) and m.eps == 1e-3 for m in norms)
    with pytest.raises(QnnrunError, match="method.bn_eps"):
        build_method(compose_config([f"method={name}", "method.bn_eps=0"]))


def test_bnn_cifar10_preset_is_the_reference_recipe(tmp_path: Path) -> None:
    """BinaryNet Train-time/cifar10.py: Adam, LR_start = 0.001 decayed per epoch by
    (LR_fin / LR_start)^(1 / num_epochs) to LR_fin = 3e-7, num_epochs = 500, batch_size = 50, no
    augmentation, inputs 2 / 255 * x - 1 in [-1, 1], BatchNorm epsilon 1e-4."""
    cfg = compose_config(["experiment=bnn_cifar10"], data_dir=tmp_path)
    assert (cfg.optim.name, cfg.optim.lr, cfg.sched.name, cfg.trainer.epochs) == ("adam", 1e-3, "exp", 500)
    assert (cfg.dataset.batch_size, cfg.dataset.augment) == (50, False)
    assert (cfg.method.name, cfg.method.loss, cfg.method.glorot_lr, cfg.method.bn_eps) == (
        "bnn", "squared_hinge", True, 1e-4)
    decay = (3e-7 / 1e-3) ** (1 / 500)
    for epoch in (0, 1, 250, 499):
        assert lr_factor(cfg.sched, epoch * 7, 7, 500) == pytest.approx(decay**epoch, rel=1e-12)
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    loader = TensorLoader(pixels, torch.zeros(1, dtype=torch.int64), batch_size=1, mean=cfg.dataset.mean,
                          std=cfg.dataset.std, device="cpu", seed=0)
    (images, _), = list(loader)
    assert torch.allclose(images[0, 0, 0], torch.tensor([-1.0, 2 / 255 * 51 - 1, 1.0]), rtol=0, atol=1e-6)


def test_aqe_cifar10_preset_is_the_papers_recipe(tmp_path: Path) -> None:
    """Chen et al. 2020: Adam 0.01 with exponential decay, batch 256, 200 epochs, no Glorot scaling;
    the preset's bnn point shares aqe's options, so it differs from AQE only in the estimator."""
    for point in ("aqe_w1a1", "bnn_w1a1"):
        cfg = compose_config(["experiment=aqe_cifar10", f"grid_point={point}"], data_dir=tmp_path)
        assert (cfg.optim.name, cfg.optim.lr, cfg.sched.name) == ("adam", 0.01, "exp")
        assert (cfg.dataset.batch_size, cfg.trainer.epochs) == (256, 200)
        assert build_method(cfg).glorot_lr is False and build_method(cfg).bn_eps is None


def test_squared_hinge_hand_value() -> None:
    logits = torch.tensor([[0.5, -2.0, 1.5]])
    # targets (+1, -1, -1): (1-0.5)^2 + 0 + (1+1.5)^2 = 0.25 + 6.25, mean over 3
    assert SquaredHinge()(logits, torch.tensor([0])).item() == pytest.approx(6.5 / 3)
    _, method, _ = _built("method=qnn", "method.loss=squared_hinge")
    assert isinstance(method.criterion(0.0), SquaredHinge)
    with pytest.raises(QnnrunError, match="label_smoothing"):
        method.criterion(0.1)


def test_shift_batchnorm_multiplies_by_powers_of_two() -> None:
    norm = ShiftBatchNorm2d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.3, -1.7, 5.0]))
        norm.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    out = norm(x)
    centered = x - x.mean((0, 2, 3), keepdim=True)
    var = (centered * Q.power_of_two(centered)).mean((0, 2, 3), keepdim=True)
    multiplier = Q.power_of_two(1 / torch.sqrt(var + norm.eps)) * Q.power_of_two(norm.weight.detach()).view(1, 3, 1, 1)
    assert _is_power_of_two(multiplier)
    assert torch.allclose(out, centered * multiplier + norm.bias.detach().view(1, 3, 1, 1), atol=1e-6)
    assert torch.allclose(norm.running_mean, 0.1 * x.mean((0, 2, 3)))
    norm.eval()
    ratio = (norm(x) - norm.bias.detach().view(1, 3, 1, 1)) / (x - norm.running_mean.view(1, 3, 1, 1))
    per_channel = ratio.detach().transpose(0, 1).flatten(1)  # [C, everything else]
    assert torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel), rtol=1e-4)  # one per channel
    assert _is_power_of_two(per_channel[:, 0].round(decimals=4))
    out.sum().backward()  # power-of-two rounding passes the gradient straight through
    assert norm.weight.grad is not None


def test_shift_batchnorm_bf16_input_normalised_in_float32() -> None:
    """As nn.BatchNorm under autocast: a bf16 input gets float32 statistics and a bf16 output."""
    norm, reference = ShiftBatchNorm2d(3), ShiftBatchNorm2d(3)
    x = (torch.randn(8, 3, 4, 4) * 3 + 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    expected = reference(x.float())  # the same values, all in float32
    assert out.dtype == torch.bfloat16 and norm.running_mean.dtype == torch.float32
    assert torch.equal(norm.running_mean, reference.running_mean)
    assert torch.equal(norm.running_var, reference.running_var)
    assert torch.equal(out, expected.bfloat16())
    norm.eval(), reference.eval()
    assert torch.equal(norm(x), reference(x.float()).bfloat16())


def test_shift_batchnorm_swap_in_build() -> None:
    model, _, _ = _built("method=bnn", "method.shift_bn=true")
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [ShiftBatchNorm1d] * 3  # two hidden + the output BatchNorm


def test_shift_adamax_one_step_hand_value() -> None:
    param = nn.Parameter(torch.tensor([1.0, -1.0]))
    optimizer = ShiftAdaMax([param], lr=0.01, betas=(0.9, 0.999))
    param.grad = torch.tensor([0.3, -0.05])
    optimizer.step()
    # m = 0.1 g, v = |g|; AP2(1 / (1 - 0.9)) = AP2(10) = 8; AP2(1/0.3) = 4, AP2(1/0.05) = AP2(20) = 16
    expected = torch.tensor([1.0 - 0.01 * 8 * 0.03 * 4, -1.0 + 0.01 * 8 * 0.005 * 16])
    assert torch.allclose(param.detach(), expected)


def test_gradient_quantization_hooks_quantize_the_layer_output_gradient() -> None:
    model, _, _ = _built("method=qnn", "bits=2", "method.grad_bits=3")
    first = quant_layers(model)[0][1]  # float input [B, 64], weights inside [-1, 1]: no mask
    upstream = torch.randn(64, first.out_features)
    first(torch.eye(64)).backward(upstream)
    quantized = first.weight.grad.T  # = (quantized upstream)^T @ I
    codes = quantized / (upstream.abs().max() / 3)
    assert torch.allclose(codes, torch.round(codes), atol=1e-4) and codes.abs().max() <= 3 + 1e-4
    assert not torch.allclose(quantized, upstream)


@pytest.mark.parametrize("override,match", [
    ("method.loss=l2", "method.loss"),
    ("method.grad_bits=1", "method.grad_bits=1 is not valid: valid are integers 2-16, or 32"),
    ("method.shift_bn=3", "method.shift_bn"), ("method.alpha=0", "method.alpha"),
    ("method.alpha_end=0.2", "method.alpha_end"),
])
def test_bad_options_are_user_errors(override: str, match: str) -> None:
    with pytest.raises(QnnrunError, match=match):
        build_method(compose_config(["method=aqe", override]))
    with pytest.raises(QnnrunError, match="act_quant"):
        build_method(compose_config(["method=qnn", "method.act_quant=cubic"]))


def test_alpha_schedule_rises_linearly_per_epoch() -> None:
    model, method, _ = _built("method=aqe", "bits=2", "method.alpha=0.5", "method.alpha_end=1.0")
    seen = []
    for epoch in range(5):
        method.on_epoch_start(model, epoch, 5)
        alphas = {m.alpha for m in model.modules() if isinstance(m, AsymptoticQuantizer)}
        seen.append(alphas.pop())
        assert not alphas
    assert seen == pytest.approx([0.5, 0.625, 0.75, 0.875, 1.0])
    assert method.scalars(model)["alpha"] == 1.0


def test_aqe_convnet_shape_and_layers() -> None:
    model = build_model({"name": "aqe_convnet", "width": 0.125}, in_channels=3, num_classes=10, image_size=32)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [128, 128, 10]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(QnnrunError, match="channels"):
        build_model({"name": "aqe_convnet", "channels": [8, 8]}, in_channels=3, num_classes=10, image_size=32)


# ---- real short trainings on digits ------------------------------------------------------------

def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    cfg = compose_config(list(overrides), data_dir=tmp_path / "data")
    return train(cfg, tmp_path / name)


@pytest.mark.parametrize("overrides,floor", [
    (("method=bnn",), 80.0),
    (("method=qnn", "bits=2", "method.act_quant=log"), 80.0),
    # AQE at its paper's Adam 0.01: without BinaryNet's Glorot-scaled rates (off for aqe) the default
    # SGD 0.1 moves the U(-1, 1) latent weights too slowly (digits W1A1, 6 epochs: 64% against 92%).
    (("method=aqe", "bits=1", "optim=adam", "optim.lr=0.01"), 80.0),
    (("method=aqe", "bits.w=2", "bits.a=3", "method.alpha_end=1.0", "optim=adam", "optim.lr=0.01"), 80.0),
], ids=["bnn", "qnn-w2a2-log", "aqe-w1a1", "aqe-w2a3-schedule"])
def test_digits_binary_methods_learn(tmp_path: Path, overrides: tuple[str, ...], floor: float) -> None:
    summary = _train(tmp_path, "run", *overrides, "trainer.epochs=6")
    assert summary["test_acc"] >= floor  # chance is 10%
    model = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["model"]
    latent = [v for k, v in model.items() if k.endswith("weight") and v.dim() == 2]
    assert max(w.abs().max().item() for w in latent) <= 1.0
    # init_from a run of the same method (its output BatchNorm wraps the last layer): the same network
    # (aqe's default re-estimates BatchNorm before an evaluation, from batches that differ between the runs)
    fixed = ("quant.bn_reestimate_batches=0",)
    first = _train(tmp_path, "first", *overrides, *fixed, "trainer.epochs=2")
    again = _train(tmp_path, "again", *overrides, *fixed, "trainer.epochs=0", f"init_from={tmp_path / 'first'}")
    assert again["test_acc"] == first["test_acc"]


def test_digits_bnn_with_every_binarynet_option_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "run", "method=bnn", "method.loss=squared_hinge",
                     "method.shift_bn=true", "method.grad_bits=6", "optim=shift_adamax", "trainer.epochs=6")
    assert summary["test_acc"] >= 75.0
