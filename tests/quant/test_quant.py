"""Exact numerics of the quantizers, the quantized layers and the model conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qnnrun.metrics.memory import KernelTraffic
from qnnrun.quant import functional as Q
from qnnrun.quant.convert import LayerBits, convert, forward_order, layer_bits
from qnnrun.quant.layers import ChannelState, QuantConv2d, QuantLinear
from qnnrun.quant.quantizers import UniformQuantizer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, False), (8, True), (8, False), (5, False)])
def test_per_tensor_bit_exact_with_torch(bits: int, signed: bool) -> None:
    x = torch.randn(1000) * 3
    qmin, qmax = Q.code_range(bits, signed)
    zero_point = 0 if signed else 3 % (qmax + 1)
    scale = torch.tensor(0.173)
    ours = Q.fake_quantize(x, scale, zero_point, qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(x, 0.173, zero_point, qmin, qmax)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_bit_exact_with_torch(bits: int) -> None:
    w = torch.randn(6, 3, 3, 3)
    qmin, qmax = Q.code_range(bits, signed=True)
    scale = torch.rand(6) * 0.5 + 0.05
    zero_point = torch.zeros(6, dtype=torch.int32)
    ours = Q.fake_quantize(w, scale.view(-1, 1, 1, 1), 0.0, qmin, qmax)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, qmin, qmax)
    assert torch.equal(ours, ref)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _composed_fake_quantize(x, scale, zero_point, qmin, qmax):
    """The formula of Q.fake_quantize written out, with its in-range mask."""
    codes = torch.round(x * (1.0 / scale)) + zero_point
    return (codes.clamp(qmin, qmax) - zero_point) * scale, (codes >= qmin) & (codes <= qmax)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_fake_quantize_kernel_equals_the_formula(device: str) -> None:
    # PyTorch's one-pass kernel (taken on a GPU in eager mode) against the composed formula,
    # values and masks, on ties (multiples of s/2), clipped values and random ones.
    ties = torch.arange(-40, 41, dtype=torch.float32) * 0.0625
    x = torch.cat([ties, torch.randn(5000) * 3]).to(device)
    for (qmin, qmax), zero_point in (((-2, 1), 0.0), ((0, 15), 0.0), ((0, 3), 1.0), ((0, 255), 37.0)):
        scale = torch.tensor(0.125, device=device)
        for given in (zero_point, torch.tensor(zero_point, device=device)):  # a number or a device tensor
            fused = Q._fused_fake_quantize(x, scale, given, qmin, qmax)
            assert fused is not None
            expected = _composed_fake_quantize(x, scale, zero_point, qmin, qmax)
            assert torch.equal(fused[0], expected[0]) and torch.equal(fused[1], expected[1])
    w = torch.cat([ties.repeat(8, 1), torch.randn(8, 81)], 1).view(16, 9, 3, 3).to(device)
    scale = torch.tensor([0.0625, 0.125, 0.25, 0.5] * 4, device=device).view(-1, 1, 1, 1)
    fused = Q._fused_fake_quantize(w, scale, 0.0, -8, 7)
    assert fused is not None
    expected = _composed_fake_quantize(w, scale, 0.0, -8, 7)
    assert torch.equal(fused[0], expected[0]) and torch.equal(fused[1], expected[1])
    # Per-channel zero points other than a known 0 keep the formula (the kernel would add them
    # before rounding); so do other dtypes.
    assert Q._fused_fake_quantize(w, scale, torch.zeros_like(scale), -8, 7) is None
    assert Q._fused_fake_quantize(x.double(), scale[0, 0, 0, 0].double(), 0.0, -8, 7) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [False, True])
def test_fake_quantize_and_lsq_take_the_fused_kernel_with_the_same_values_and_gradients(
        device: str, fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # FUSED_KERNEL_DEVICES holds "cuda" only; adding the CPU runs a GPU's path here.
    monkeypatch.setattr(Q, "FUSED_KERNEL_DEVICES", frozenset({device} if fused else set()))
    x = (torch.randn(64, 8, 5, 5, device=device) * 2).requires_grad_()
    grad = torch.randn_like(x)
    for scale, zero_point in ((torch.tensor(0.25, device=device), torch.tensor(2.0, device=device)),
                              (torch.rand(64, 1, 1, 1, device=device) + 0.1, 0.0)):
        out = Q.fake_quantize(x, scale, zero_point, -4, 3)
        (got,) = torch.autograd.grad(out, x, grad)
        value, inside = _composed_fake_quantize(x.detach(), scale, zero_point, -4, 3)
        assert torch.equal(out, value) and torch.equal(got, grad * inside)
    # LSQ's value is fake_quantize's with the step as scale; its gradients are its own (strict range).
    step = torch.tensor(0.25, device=device, requires_grad=True)
    out = Q.lsq_quantize(x, step, -4, 3, 0.5)
    got_x, got_step = torch.autograd.grad(out, (x, step), grad)
    v = x.detach() * (1.0 / step.detach())
    codes = torch.round(v).clamp(-4, 3)
    strict = (v > -4) & (v < 3)
    assert torch.equal(out, codes * step.detach()) and torch.equal(got_x, grad * strict)
    assert torch.equal(got_step, (grad * (codes - v * strict)).sum() * 0.5)


def test_kernel_traffic_counts_kernels_and_the_bytes_they_read_and_write() -> None:
    x = torch.zeros(1000)
    with KernelTraffic() as traffic:
        x.view(10, 100)  # a view runs no kernel
        y = x * 2  # reads and writes 4000 bytes
        x.add_(y)  # in place: reads x and y, writes x
    assert traffic.kernels == 2 and traffic.nbytes == 8000 + 12000
    assert traffic.by_op == {"mul": 8000, "add_": 12000}


def test_the_fused_kernel_moves_9_bytes_per_element_where_the_formula_moves_61(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What the GPU path is for: one pass (read 4 bytes, write 4 and a 1-byte mask per element)
    # instead of the formula's nine. Counted on the CPU with the GPU's choice of kernel.
    x = torch.randn(100_000).requires_grad_()
    scale = torch.tensor(0.1)
    moved = {}
    for fused in (False, True):
        monkeypatch.setattr(Q, "FUSED_KERNEL_DEVICES", frozenset({"cpu"} if fused else set()))
        with KernelTraffic() as traffic:
            Q.fake_quantize(x, scale, 0.0, -2, 1)
        moved[fused] = traffic.nbytes / x.numel()
    assert 9 <= moved[True] < 9.1 and 61 <= moved[False] < 61.1


def test_clipped_ste_gradient_equals_torch_fake_quantize_gradient() -> None:
    x = (torch.randn(500) * 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(500)
    Q.fake_quantize(x, torch.tensor(0.1), 0, -8, 7, "clipped").backward(grad)
    torch.fake_quantize_per_tensor_affine(x_ref, 0.1, 0, -8, 7).backward(grad)
    assert torch.equal(x.grad, x_ref.grad)
    assert (x.grad == 0).any() and (x.grad != 0).any()


def test_identity_ste_passes_every_gradient() -> None:
    x = (torch.randn(100) * 10).requires_grad_()
    grad = torch.randn(100)
    Q.fake_quantize(x, torch.tensor(0.1), 0, -2, 1, "ste").backward(grad)
    assert torch.equal(x.grad, grad)


def test_rounding_is_half_to_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    out = Q.fake_quantize(x, torch.tensor(1.0), 0, -8, 7)
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_code_ranges() -> None:
    assert Q.code_range(2, True) == (-2, 1)
    assert Q.code_range(2, True, narrow=True) == (-1, 1)
    assert Q.code_range(4, False) == (0, 15)
    assert Q.code_range(1, True) == (-1, 1)
    assert Q.code_range(1, False) == (0, 1)


def test_sign_quantizer_values_and_clipped_gradient() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    out = Q.sign_quantize(x, torch.tensor(0.25))
    assert out.tolist() == [-0.25, -0.25, 0.25, 0.25, 0.25, 0.25]
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_signed_one_bit_uniform_is_sign_with_mean_abs_scale() -> None:
    w = torch.randn(4, 10)
    quantizer = UniformQuantizer(1, signed=True, channels=4)
    expected = torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(1, keepdim=True)
    assert torch.allclose(quantizer(w), expected)


def test_the_range_is_the_largest_magnitude_of_either_sign() -> None:
    """max(-min x, max x): a negative side larger than the positive one sets the range (per tensor too)."""
    assert Q.channel_amax(torch.tensor([-3.0, 1.0]), False).item() == 3.0
    assert Q.channel_amax(torch.tensor([[-3.0, 1.0], [2.0, -1.0]]), True).flatten().tolist() == [3.0, 2.0]
    out = UniformQuantizer(4, signed=True)(torch.tensor([-3.0, 1.0]))  # step 3/7: -3 is kept, not clipped
    assert torch.allclose(out, torch.tensor([-3.0, 6 / 7]))


def test_lsq_gradients_at_the_ends_of_the_range_are_those_outside() -> None:
    """LSQ eq. 3 is strict: at v = qmin or qmax exactly, x gets no gradient and s gets the clamp code;
    at |v| = 1 a binary LSQ passes none to x."""
    step = torch.tensor(0.25, requires_grad=True)
    x = torch.tensor([0.75, -1.0, 0.3], requires_grad=True)  # v = 3 (qmax), -4 (qmin), 1.2
    grad_x, grad_step = torch.autograd.grad(Q.lsq_quantize(x, step, -4, 3, 0.5).sum(), (x, step))
    assert grad_x.tolist() == [0.0, 0.0, 1.0]
    assert torch.allclose(grad_step, torch.tensor((3 - 4 + (1 - 1.2)) * 0.5))
    x = torch.tensor([0.25, -0.25, 0.1], requires_grad=True)  # v = 1, -1, 0.4
    (grad_x,) = torch.autograd.grad(Q.lsq_quantize(x, step, -1, 1, 0.5).sum(), x)
    assert grad_x.tolist() == [0.0, 0.0, 1.0]


def test_weight_quantizer_uses_maxabs_scale_per_channel() -> None:
    w = torch.randn(8, 4, 3, 3)
    quantizer = UniformQuantizer(4, signed=True, channels=8)
    scale = w.abs().amax(dim=(1, 2, 3)) / 7
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(8, dtype=torch.int32), 0, -8, 7)
    assert torch.equal(quantizer(w), ref)
    assert quantizer(w).unique().numel() <= 8 * 16


def test_activation_quantizer_detects_sign_and_tracks_ema() -> None:
    # momentum is the newest observation's weight (0.25, not 0.5, where the two readings agree).
    quantizer = UniformQuantizer(4, signed=None, range_mode="ema", momentum=0.25)
    quantizer.train()
    quantizer(torch.tensor([0.0, 2.0]))
    assert quantizer.signed is False and quantizer.stat.item() == 2.0
    quantizer(torch.tensor([0.0, 4.0]))
    assert quantizer.stat.item() == 2.5  # 2 + 0.25 * (4 - 2)
    quantizer.eval()
    out = quantizer(torch.tensor([0.0, 10.0, 1.0]))
    assert quantizer.stat.item() == 2.5  # fixed in eval
    assert torch.allclose(out, torch.tensor([0.0, 2.5, 1.0]))  # step 2.5/15 = 1/6, clipped at 2.5
    signed = UniformQuantizer(4, signed=None, range_mode="ema")
    signed(torch.tensor([-1.0, 0.5]))
    assert signed.signed is True


def test_quantizer_state_round_trips_through_state_dict() -> None:
    quantizer = UniformQuantizer(3, signed=None, range_mode="ema")
    quantizer(torch.tensor([0.0, 5.0]))
    restored = UniformQuantizer(3, signed=None, range_mode="ema")
    restored.load_state_dict(quantizer.state_dict())
    assert restored.signed is False and restored.observed and restored.stat.item() == 5.0


def _conv() -> QuantConv2d:
    float_conv = nn.Conv2d(3, 4, 3, padding=1)
    return QuantConv2d.from_float(float_conv, UniformQuantizer(2, channels=4), None)


def test_channel_states_select_rows() -> None:
    layer = _conv()
    quantized = layer.weight_quant(layer.weight).detach()
    assert torch.equal(layer.effective_weight(), quantized)
    layer.set_channel_state(ChannelState.FLOAT, torch.tensor([1, 3]))
    mixed = layer.effective_weight().detach()
    assert torch.equal(mixed[[0, 2]], quantized[[0, 2]])
    assert torch.equal(mixed[[1, 3]], layer.weight.detach()[[1, 3]])
    assert layer.quantized_fraction() == 0.5


def test_frozen_rows_stay_fixed_and_get_no_gradient() -> None:
    layer = _conv()
    layer.set_channel_state(ChannelState.FROZEN, torch.tensor([0]))
    frozen = layer.effective_weight()[0].detach().clone()
    layer(torch.randn(2, 3, 5, 5)).sum().backward()
    assert torch.equal(layer.weight.grad[0], torch.zeros_like(layer.weight.grad[0]))
    assert layer.weight.grad[1:].abs().sum() > 0
    with torch.no_grad():
        layer.weight.mul_(3)
    assert torch.equal(layer.effective_weight()[0].detach(), frozen)


def test_noisy_rows_stay_within_half_a_step() -> None:
    layer = _conv()
    layer.set_channel_state(ChannelState.NOISY)
    step = layer.weight_quant.scale(layer.weight).detach()
    noise = layer.effective_weight().detach() - layer.weight.detach()
    assert (noise.abs() <= step / 2 + 1e-7).all() and noise.abs().sum() > 0


def test_channel_state_survives_state_dict() -> None:
    layer = _conv()
    layer.set_channel_state(ChannelState.FLOAT, torch.tensor([2]))
    other = _conv()
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.effective_weight(), layer.effective_weight())


class _Net(nn.Module):
    """A net whose registration order differs from its forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.mid = nn.Conv2d(2, 2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.mid(torch.relu(self.conv(x))))).flatten(1))


def test_forward_order_and_layer_policy() -> None:
    net = _Net()
    assert forward_order(net, torch.zeros(1, 1, 6, 6)) == ["conv", "mid", "head"]
    assert layer_bits(0, 3, 2, 2, "fp", "fp") == LayerBits(32, 32)
    assert layer_bits(0, 3, 2, 2, "same", "fp") == LayerBits(2, 8)  # image input never below 8 bits
    assert layer_bits(0, 3, 2, 2, "same", "fp", image_input_bits=32) == LayerBits(2, 32)
    assert layer_bits(2, 3, 2, 2, "fp", "8") == LayerBits(8, 8)
    assert layer_bits(1, 3, 2, 3, "fp", "fp") == LayerBits(2, 3)
    assert layer_bits(1, 3, 32, 32, "8", "8") == LayerBits(32, 32)


def test_convert_swaps_layers_and_keeps_float_function_at_high_bits() -> None:
    net = _Net()
    x = torch.randn(4, 1, 6, 6)
    ref = net(x)
    convert(net, x, lambda name, i, n: layer_bits(i, n, 16, 16, "fp", "same"),
            lambda layer, bits: UniformQuantizer(bits, channels=layer.weight.shape[0]),
            lambda layer, bits: UniformQuantizer(bits, signed=None, range_mode="ema"))
    assert type(net.conv) is nn.Conv2d  # first layer float under policy fp
    assert isinstance(net.mid, QuantConv2d) and isinstance(net.head, QuantLinear)
    assert net.head.weight_bits == 16 and net.mid.input_bits == 16
    assert torch.allclose(net(x), ref, atol=1e-3)


def test_eval_before_calibration_changes_no_state_and_calibration_takes_the_max() -> None:
    quantizer = UniformQuantizer(4, signed=None, range_mode="ema")
    quantizer.eval()
    out = quantizer(torch.zeros(3))  # e.g. a BOPs pass on a zero batch
    assert not quantizer.observed and quantizer.signed is None and torch.equal(out, torch.zeros(3))
    quantizer.reset()
    quantizer.calibrating = True
    for batch in (torch.tensor([0.0, 1.0]), torch.tensor([-0.5, 3.0]), torch.tensor([0.0, 2.0])):
        quantizer(batch)
    quantizer.calibrating = False
    assert quantizer.stat.item() == 3.0 and quantizer.signed is True
    quantizer.reset()
    assert not quantizer.observed and quantizer.signed is None


def test_half_precision_inputs_are_quantized_in_float32() -> None:
    x = (torch.randn(1000) * 3).bfloat16()
    scale = torch.tensor(0.173)
    out = Q.fake_quantize(x, scale, 0, -8, 7)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, Q.fake_quantize(x.float(), scale, 0, -8, 7).bfloat16())
