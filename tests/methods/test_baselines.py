"""LSQ, DoReFa and PACT: hand-derived forward values and gradients, gradchecks, initialisation,
method options and real short trainings on the embedded digits set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config
from omegaconf import OmegaConf
from torch import Tensor, nn

from qnnrun.checkpoint import load_checkpoint
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate_checkpoint
from qnnrun.methods import build_method
from qnnrun.methods.base import batch_statistics
from qnnrun.methods.lsq import raise_to_floor
from qnnrun.quant import functional as Q
from qnnrun.quant.calibrate import MSE_GRID
from qnnrun.quant.layers import quant_layers
from qnnrun.quant.learned import LsqQuantizer, PactQuantizer
from qnnrun.quant.quantizers import DorefaActivationQuantizer
from qnnrun.schema import saved_config

D = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _lsq_grads(x: list[float], grad: list[float], step: float, qmin: int, qmax: int, scale: float = 1.0,
               offset: float | None = None) -> tuple[torch.Tensor, ...]:
    xs = torch.tensor(x, dtype=D, requires_grad=True)
    s = torch.tensor(step, dtype=D, requires_grad=True)
    beta = torch.tensor(offset, dtype=D, requires_grad=True) if offset is not None else None
    out = Q.lsq_quantize(xs, s, qmin, qmax, scale, beta)
    out.backward(torch.tensor(grad, dtype=D))
    return out.detach(), xs.grad, s.grad, beta.grad if beta is not None else None


# ---- LSQ ------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,step_grad,x_grad", [
    (-3.0, -2.0, 0.0),  # v = -6 below -Qn = -2: d/ds = -Qn
    (0.1, -0.2, 1.0),  # v = 0.2 inside: round(v) - v = 0 - 0.2
    (0.3, 0.4, 1.0),  # v = 0.6 inside: 1 - 0.6
    (2.0, 1.0, 0.0),  # v = 4 above Qp = 1: d/ds = Qp
])
def test_lsq_step_gradient_in_each_region(x: float, step_grad: float, x_grad: float) -> None:
    _, gx, gs, _ = _lsq_grads([x], [1.0], 0.5, -2, 1)  # 2-bit signed, s = 0.5
    assert gs.item() == pytest.approx(step_grad)
    assert gx.item() == x_grad


def test_lsq_forward_and_summed_step_gradient_with_gradient_scale() -> None:
    out, gx, gs, _ = _lsq_grads([-3.0, 0.1, 0.3, 2.0], [0.5, 1.0, 2.0, 3.0], 0.5, -2, 1, scale=0.25)
    assert torch.equal(out, torch.tensor([-1.0, 0.0, 0.5, 0.5], dtype=D))
    assert torch.equal(gx, torch.tensor([0.0, 1.0, 2.0, 0.0], dtype=D))
    # 0.5 * (-2) + 1 * (-0.2) + 2 * 0.4 + 3 * 1 = 2.6, times g = 0.25
    assert gs.item() == pytest.approx(0.65)


def test_lsq_unsigned_below_zero_gives_no_step_gradient() -> None:
    out, gx, gs, _ = _lsq_grads([-1.0, 5.0], [1.0, 1.0], 1.0, 0, 3)
    assert out.tolist() == [0.0, 3.0] and gx.tolist() == [0.0, 0.0]
    assert gs.item() == pytest.approx(3.0)  # -Qn = 0 below, Qp = 3 above


def test_lsq_binary_is_step_times_sign() -> None:
    out, gx, gs, _ = _lsq_grads([-0.2, 0.3, 1.0, -2.0], [1.0, 1.0, 1.0, 1.0], 0.5, -1, 1)
    assert out.tolist() == [-0.5, 0.5, 0.5, -0.5]
    assert gx.tolist() == [1.0, 1.0, 0.0, 0.0]  # |x / s| < 1 only
    assert gs.item() == pytest.approx((-1 + 0.4) + (1 - 0.6) + 1 - 1)


def test_lsq_learned_offset_gradients() -> None:
    # s = 1, beta = -1, codes 0..3: v = x + 1 = [-1 (below), 1.4 (inside), 6 (above)]
    out, gx, gs, gb = _lsq_grads([-2.0, 0.4, 5.0], [1.0, 2.0, 3.0], 1.0, 0, 3, scale=0.5, offset=-1.0)
    assert out.tolist() == [-1.0, 0.0, 2.0]
    assert gx.tolist() == [0.0, 2.0, 0.0]
    assert gs.item() == pytest.approx(0.5 * (1 * 0 + 2 * (1 - 1.4) + 3 * 3))
    assert gb.item() == pytest.approx(0.5 * (1 + 3))  # 1 outside, 0 inside


def test_lsq_forward_is_bit_exact_with_torch_fake_quantize() -> None:
    x = torch.randn(2000) * 3
    out = Q.lsq_quantize(x, torch.tensor(0.173), -8, 7, 1.0)
    assert torch.equal(out, torch.fake_quantize_per_tensor_affine(x, 0.173, 0, -8, 7))


def _paper_lsq(x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int, g: float) -> torch.Tensor:
    """The pseudo-code of the LSQ paper (appendix): gradscale, clip, roundpass, all in autograd."""
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s, qmin, qmax)
    return ((v.round() - v).detach() + v) * s


@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_gradients_equal_the_papers_autograd_reference(per_channel: bool) -> None:
    w = torch.randn(6, 3, 3, 3, dtype=D)
    step = (torch.rand(6, 1, 1, 1, dtype=D) * 0.3 + 0.2) if per_channel else torch.tensor(0.3, dtype=D)
    grad = torch.randn_like(w)
    ours_w, ours_s = w.clone().requires_grad_(), step.clone().requires_grad_()
    Q.lsq_quantize(ours_w, ours_s, -4, 3, 0.1).backward(grad)
    ref_w, ref_s = w.clone().requires_grad_(), step.clone().requires_grad_()
    _paper_lsq(ref_w, ref_s, -4, 3, 0.1).backward(grad)
    torch.testing.assert_close(ours_w.grad, ref_w.grad)
    torch.testing.assert_close(ours_s.grad, ref_s.grad)


def _step_grad(quantizer: LsqQuantizer, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    quantizer.zero_grad()
    quantizer(x).backward(grad)
    return quantizer.step.grad.clone()


@pytest.mark.parametrize("shape,activations,per_channel,bits,values,qp", [
    ((8, 4, 3, 3), False, False, 2, 288, 1),  # weights per tensor: all 288 weights, Qp = 1
    ((8, 4, 3, 3), False, True, 3, 36, 3),  # per channel: the 36 weights of a row
    ((5, 4, 6, 6), True, False, 3, 144, 7),  # activations: features per sample, unsigned Qp = 7
])
def test_lsq_gradient_scale_of_the_module(shape: tuple[int, ...], activations: bool, per_channel: bool, bits: int,
                                          values: int, qp: int) -> None:
    x = torch.randn(shape, dtype=D)
    if activations:
        x = x.relu()
    quantizer = LsqQuantizer(bits, signed=None if activations else True,
                             channels=shape[0] if per_channel else None, activations=activations).double()
    quantizer.train()
    grad = torch.randn(shape, dtype=D)
    scaled = _step_grad(quantizer, x, grad)
    step = quantizer.step.detach().clone().requires_grad_()
    qmin, qmax = quantizer.code_range()
    assert qmax == qp
    Q.lsq_quantize(x, step.view(-1, 1, 1, 1) if per_channel else step, qmin, qmax, 1.0).backward(grad)
    torch.testing.assert_close(scaled, step.grad / (values * qp) ** 0.5)


def test_lsq_initialisation_from_weights_and_calibration_batches() -> None:
    w = torch.randn(8, 4, 3, 3)
    weights = LsqQuantizer(4, signed=True).train()
    weights(w)
    assert weights.step.item() == pytest.approx(2 * w.abs().mean().item() / 7**0.5, rel=1e-6)
    rows = LsqQuantizer(2, signed=True, channels=8).train()
    rows(w)
    torch.testing.assert_close(rows.step.detach(), 2 * w.abs().flatten(1).mean(1) / 1.0)

    acts = LsqQuantizer(3, signed=None, activations=True)
    batches = [torch.rand(4, 10) * 2, torch.rand(6, 10)]
    acts.calibrating = True
    with torch.no_grad():
        for batch in batches:
            acts(batch)
    acts.calibrating = False
    mean = torch.cat([b.flatten() for b in batches]).mean().item()
    assert acts.signed is False
    assert acts.step.item() == pytest.approx(2 * mean / 7**0.5, rel=1e-6)
    acts.reset()
    acts.calibrating = True
    with torch.no_grad():
        acts(torch.randn(4, 10))  # a negative value: signed codes, Qp = 3
    assert acts.signed is True and acts.initialized


def test_lsq_evaluation_before_initialisation_stores_nothing() -> None:
    quantizer = LsqQuantizer(4, signed=None, activations=True).eval()
    quantizer(torch.rand(3, 5))
    assert not quantizer.initialized and quantizer.signed is None and quantizer.step.item() == 1.0


def test_lsq_offset_initialisation() -> None:
    quantizer = LsqQuantizer(2, signed=None, activations=True, learned_offset=True).train()
    x = torch.tensor([[-1.0, 0.0, 2.0, 3.0]])
    quantizer(x)
    assert quantizer.offset.item() == -1.0
    assert quantizer.step.item() == pytest.approx(2 * (1.0 - -1.0) / 3**0.5)  # mean(x - min) = 2, Qp = 3


def _calibrate(quantizer: nn.Module, batches: list[Tensor]) -> None:
    quantizer.calibrating = True
    with torch.no_grad():
        for batch in batches:
            quantizer(batch)
    quantizer.calibrating = False


def _least_error_step(x: Tensor, reference: Tensor, qmin: int, qmax: int) -> Tensor:
    """Brute force: the candidate ``reference * MSE_GRID`` with the least squared error on ``x`` [n]."""
    errors = [((torch.clamp(torch.round(x / s), qmin, qmax) * s - x) ** 2).sum() for s in reference * MSE_GRID]
    return reference * MSE_GRID[int(torch.stack(errors).argmin())]


def test_lsq_mse_initialisation_takes_the_least_error_step_over_all_calibration_batches() -> None:
    torch.manual_seed(0)
    batches = [torch.relu(torch.randn(8, 4, 5, 5)) + 0.5 * torch.rand(8, 4, 5, 5) * (i + 1) for i in range(3)]
    quantizer = LsqQuantizer(2, signed=None, activations=True, init="mse")
    _calibrate(quantizer, batches)
    reference = 2 * batches[0].mean() / 3**0.5  # the LSQ rule on the first batch: unsigned, Qp = 3
    expected = _least_error_step(torch.cat([b.flatten() for b in batches]), reference, 0, 3)
    assert quantizer.step.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = LsqQuantizer(2, signed=None, activations=True)
    _calibrate(plain, batches)
    assert quantizer.step.item() != pytest.approx(plain.step.item(), rel=1e-3)  # the search moved it
    assert "init=mse" in repr(quantizer)


def test_lsq_mse_initialisation_per_channel_and_offset() -> None:
    torch.manual_seed(1)
    w = torch.randn(3, 2, 3, 3) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1)
    quantizer = LsqQuantizer(3, signed=True, channels=3, init="mse").train()
    with torch.no_grad():
        quantizer(w)
    for c in range(3):
        reference = 2 * w[c].abs().mean() / 3**0.5  # signed 3 bits: Qp = 3
        assert quantizer.step[c].item() == pytest.approx(_least_error_step(w[c].flatten(), reference, -4, 3).item(),
                                                         rel=1e-6)
    x = torch.randn(6, 20) + 1.0
    shifted = LsqQuantizer(2, signed=None, activations=True, learned_offset=True, init="mse").train()
    with torch.no_grad():
        shifted(x)
    lowest = x.min()
    assert shifted.offset.item() == lowest.item()  # beta starts at the smallest value, s searched for it
    expected = _least_error_step((x - lowest).flatten(), 2 * (x.mean() - lowest) / 3**0.5, 0, 3)
    assert shifted.step.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="init='max': choose one of lsq, mse"):
        LsqQuantizer(2, init="max")


def test_lsq_step_floor_is_a_fraction_of_the_initial_step_and_survives_old_checkpoints() -> None:
    w = torch.randn(4, 3, 3, 3)
    quantizer = LsqQuantizer(2, signed=True, channels=4, min_step_ratio=0.01).train()
    quantizer(w)
    start = quantizer.step.detach().clone()
    torch.testing.assert_close(quantizer.min_step, start * 0.01)
    with torch.no_grad():
        quantizer.step.copy_(torch.tensor([-0.5, 0.0, 1e-9, 7.0]))
    raise_to_floor([quantizer])
    torch.testing.assert_close(quantizer.step.detach(), torch.stack([*(start[:3] * 0.01), torch.tensor(7.0)]))
    # A checkpoint written before the floor existed: the floor is taken from the step as saved.
    old = {k: v for k, v in quantizer.state_dict().items() if not k.endswith("min_step")}
    restored = LsqQuantizer(2, signed=True, channels=4, min_step_ratio=0.01)
    restored.load_state_dict(old)
    torch.testing.assert_close(restored.min_step, old["step"] * 0.01)


def test_lsq_method_raises_steps_to_their_floor_after_each_update(tmp_path: Path) -> None:
    model, method = _model_and_method(tmp_path, "method=lsq", "bits=2", "method.min_step_ratio=0.1")
    quantizers = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
    model.train()(torch.randn(8, 64))
    starts = [q.step.detach().clone() for q in quantizers]
    with torch.no_grad():
        quantizers[1].step.fill_(-1.0)
    assert method.scalars(model)["lsq/steps_at_floor"] == 1.0
    method.after_optimizer_step(model, 0)
    assert quantizers[1].step.item() == pytest.approx(0.1 * starts[1].item())
    assert all(torch.equal(q.step.detach(), s)
               for q, s in zip(quantizers, starts, strict=True) if q is not quantizers[1])
    _, off = _model_and_method(tmp_path, "method=lsq", "bits=2", "method.min_step_ratio=0")
    with torch.no_grad():
        quantizers[1].step.fill_(-1.0)
    off.after_optimizer_step(model, 0)
    assert quantizers[1].step.item() == -1.0 and "lsq/steps_at_floor" not in off.scalars(model)


# ---- DoReFa ----------------------------------------------------------------------------------


def test_quantize_unit_values_and_straight_through_gradient() -> None:
    x = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.9, 1.0], requires_grad=True)
    out = Q.quantize_unit(x, 2)  # round(3x) / 3, half to even: 1.5 -> 2
    assert torch.equal(out, torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0]) / 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones(6))


def test_dorefa_weight_values() -> None:
    w = torch.tensor([-2.0, -0.1, 0.05, 1.0], dtype=D)
    # tanh(w) / (2 * tanh(2)) + 0.5 = [0, 0.448, 0.526, 0.895] -> round(3u) = [0, 1, 2, 3]
    assert torch.allclose(Q.dorefa_weight(w, 2), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0], dtype=D))
    mean = w.abs().mean().item()
    assert Q.dorefa_weight(w, 1).tolist() == pytest.approx([-mean, -mean, mean, mean])


def test_dorefa_weight_reductions_are_over_the_whole_tensor() -> None:
    """tensorpack's ``fw``: max|tanh w| and E|w| over the whole weight, not per output channel (rows
    of different sizes tell the two apart; a 1-D weight could not)."""
    w = torch.tensor([[-2.0, 1.0], [0.1, -0.05]], dtype=D)
    unit = torch.tanh(w) / (2 * torch.tanh(torch.tensor(2.0, dtype=D))) + 0.5
    assert torch.equal(Q.dorefa_weight(w, 2), 2 * torch.round(3 * unit) / 3 - 1)
    assert Q.dorefa_weight(w, 2)[1].tolist() == pytest.approx([1 / 3, -1 / 3])  # per channel: +-1
    mean = w.abs().mean().item()
    assert Q.dorefa_weight(w, 1).flatten().tolist() == pytest.approx([-mean, mean, mean, -mean])


def test_dorefa_weight_normalisation_passes_gradcheck() -> None:
    w = torch.randn(4, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(Q.dorefa_weight_unit, (w,))


def test_dorefa_weight_gradient_is_the_normalisations_through_the_round() -> None:
    w = torch.randn(5, 4, dtype=D, requires_grad=True)
    grad = torch.randn(5, 4, dtype=D)
    (ours,) = torch.autograd.grad(Q.dorefa_weight(w, 3), w, grad)
    (ref,) = torch.autograd.grad(2 * Q.dorefa_weight_unit(w) - 1, w, grad)
    torch.testing.assert_close(ours, ref)
    one_bit = w.detach().clone().requires_grad_()
    Q.dorefa_weight(one_bit, 1).backward(grad)
    assert torch.equal(one_bit.grad, grad)  # unclipped STE, the mean held constant


def test_dorefa_activation_clips_to_unit_interval() -> None:
    x = torch.tensor([-0.5, -0.0, 0.0, 0.2, 0.7, 1.0, 1.5], requires_grad=True)
    out = Q.dorefa_activation(x, 1)
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    out.sum().backward()
    # Both ends pass, as in the DoReFa code (TensorFlow's clip_by_value; torch's clamp passes neither).
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_dorefa_gradient_quantization_values_grid_and_mean() -> None:
    grad = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0: m = 1, u = g / 2 + 1/2 = [1, .25, .625, .5], round(3u) = [3, 1, 2, 2] -> 2 (j/3 - 1/2)
    out = Q.dorefa_quantize_gradient(grad, 2, torch.zeros_like(grad))
    assert torch.allclose(out[0], torch.tensor([1.0, -1 / 3, 1 / 3, 1 / 3]))
    assert torch.equal(out[1], torch.zeros(4))  # an all-zero sample stays zero
    x = torch.zeros(3, 2, 5, requires_grad=True)
    upstream = torch.randn(3, 2, 5)
    Q.dorefa_gradient_quantizer(x, 3).backward(upstream)
    peak = upstream.abs().amax(dim=(1, 2), keepdim=True)
    codes = (x.grad / (2 * peak) + 0.5) * 7
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    draws = torch.stack([Q.dorefa_quantize_gradient(upstream, 3, (torch.rand_like(upstream) - 0.5) / 7)
                         for _ in range(4000)])
    assert torch.allclose(draws.mean(0), upstream, atol=0.03 * peak.max().item())  # unbiased inside the range


# ---- PACT ------------------------------------------------------------------------------------


def test_pact_values_and_gradients() -> None:
    x = torch.tensor([-1.0, 0.5, 1.0, 2.0, 2.5], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    out = Q.pact_quantize(x, alpha, 2)  # steps of 2/3: round(1.5 * clamp(x, 0, 2))
    assert torch.allclose(out, torch.tensor([0.0, 2 / 3, 4 / 3, 2.0, 2.0]))
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]  # 0 <= x < alpha
    assert alpha.grad.item() == 9.0  # x >= alpha: 4 + 5


def test_signed_pact_values_and_gradients() -> None:
    x = torch.tensor([-2.0, -0.5, 0.2, 1.5], requires_grad=True)
    alpha = torch.tensor(1.0, requires_grad=True)
    out = Q.pact_quantize(x, alpha, 3, signed=True)  # 3 steps of 1/3 each side, half to even
    assert torch.allclose(out, torch.tensor([-1.0, -2 / 3, 1 / 3, 1.0]))
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0]
    assert alpha.grad.item() == 3.0  # +4 above alpha, -1 below -alpha


def test_pact_quantizer_detects_sign_from_calibration() -> None:
    quantizer = PactQuantizer(4, alpha_init=3.0)
    quantizer.calibrating = True
    quantizer(torch.rand(2, 3))
    assert quantizer.signed is False
    quantizer(torch.randn(2, 3) - 1)
    assert quantizer.signed is True


@pytest.mark.parametrize("learned", [True, False], ids=["pact", "dorefa_act_clip"])
def test_fixed_level_starts_the_image_input_at_its_largest_magnitude(learned: bool) -> None:
    """PACT's 10 (DoReFa's act_clip) is a level for ReLU outputs: the image input starts at its largest
    |x| over all calibration batches (unsigned ones before the first negative value included); every
    other input, with negative values or not, starts at the level given."""
    image = [torch.rand(4, 3, 8, 8) * 5, torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8) * 0.5]
    peak = image[0].max().item()  # the unsigned first batch holds the largest value
    assert peak > max(batch.abs().max().item() for batch in image[1:])
    first, inner = PactQuantizer(8, 10.0, learned=learned), PactQuantizer(8, 10.0, learned=learned)
    first.image_input = True
    _calibrate(first, image)
    _calibrate(inner, image)
    assert first.signed is True and first.alpha.item() == peak and first.initialized
    assert inner.signed is True and inner.alpha.item() == 10.0
    codes = torch.unique((first(image[0]) / (peak / 127)).round())  # 8 bits over the image's own range
    assert codes.max() == 127 and len(codes) > 100
    # Without calibration the first training input starts it, and later inputs leave it alone.
    fresh = PactQuantizer(8, 10.0, learned=learned).train()
    fresh.image_input = True
    fresh(image[1])
    assert fresh.alpha.item() == image[1].abs().max().item()
    fresh(image[1] * 3)
    assert fresh.alpha.item() == image[1].abs().max().item()


def test_pact_mse_start_is_lsqs_mse_grid_on_unsigned_inputs() -> None:
    """``alpha_init=mse`` searches ``MSE_GRID`` x ``2 mean|x| sqrt(Qp)`` over all calibration batches:
    on non-negative inputs the levels are ``Qp`` x LSQ's candidate steps, so both pick the same grid."""
    torch.manual_seed(0)
    batches = [torch.relu(torch.randn(8, 4, 5, 5)) * (i + 1) for i in range(3)]
    pact = PactQuantizer(2, alpha_init="mse")
    lsq = LsqQuantizer(2, signed=None, activations=True, init="mse")
    _calibrate(pact, batches)
    _calibrate(lsq, batches)
    reference = 2 * batches[0].mean() * 3**0.5  # unsigned 2 bits: Qp = 3
    expected = 3 * _least_error_step(torch.cat([b.flatten() for b in batches]), reference / 3, 0, 3)
    assert pact.alpha.item() == pytest.approx(expected.item(), rel=1e-6)
    assert pact.alpha.item() == pytest.approx(3 * lsq.step.item(), rel=1e-6)
    assert pact.alpha.item() < 10.0 and pact.signed is False and "init=mse" in repr(pact)


def test_pact_mse_start_signed_and_before_calibration() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6)
    # An evaluation before any calibration searches on its input and stores nothing.
    fresh = PactQuantizer(3, alpha_init="mse").eval()
    out = fresh(x)
    assert fresh.alpha.item() == 1.0 and not fresh.initialized and fresh.signed is None
    # Signed 3 bits: clamp(x, -alpha, alpha) on 3 levels each side (Qp = 3).
    candidates = 2 * x.abs().mean() * 3**0.5 * MSE_GRID
    errors = torch.stack([((Q.pact_quantize(x, a, 3, signed=True) - x) ** 2).sum() for a in candidates])
    best = candidates[int(errors.argmin())]
    torch.testing.assert_close(out, Q.pact_quantize(x, best, 3, signed=True))
    trained = PactQuantizer(3, alpha_init="mse").train()
    trained(x)  # no calibration: the first training input starts alpha
    assert trained.alpha.item() == pytest.approx(best.item(), rel=1e-6) and trained.signed is True
    trained(x * 5)  # and later inputs leave it to the optimizer
    assert trained.alpha.item() == pytest.approx(best.item(), rel=1e-6)
    restored = PactQuantizer(3, alpha_init="mse")
    restored.load_state_dict(trained.state_dict())
    assert restored.initialized and restored.alpha.item() == trained.alpha.item()
    restored.reset()
    assert not restored.initialized and restored.signed is None
    with pytest.raises(ValueError, match="alpha_init='max'"):
        PactQuantizer(2, alpha_init="max")


def test_fixed_level_is_dorefas_quantizer_on_the_scaled_input() -> None:
    """``learned=False`` (DoReFa's ``act_clip``): ``c * quantize_k(clamp(x / c, 0, 1))`` with DoReFa's
    clipped straight-through gradient, ``c`` a buffer at its start (searched like PACT's ``mse``)."""
    torch.manual_seed(2)
    batches = [torch.relu(torch.randn(8, 4, 5, 5)) * 3 for _ in range(2)]
    fixed = PactQuantizer(2, alpha_init="mse", learned=False)
    learned = PactQuantizer(2, alpha_init="mse")
    _calibrate(fixed, batches)
    _calibrate(learned, batches)
    assert fixed.alpha.item() == learned.alpha.item() and fixed.alpha.item() > 1.5
    assert list(fixed.parameters()) == [] and "alpha" in fixed.state_dict() and "fixed" in repr(fixed)
    c = fixed.alpha.item()
    x = torch.tensor([-1.0, 0.1, 0.3, 0.6, 0.9, 1.0, 1.5]) * c
    x.requires_grad_(True)
    out = fixed.train()(x)
    torch.testing.assert_close(out, c * Q.dorefa_activation(x.detach() / c, 2))
    out.backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]  # 1 on [0, c), 0 outside
    assert fixed.alpha.item() == c  # training inputs leave it alone
    unit = PactQuantizer(3, alpha_init=1.0, learned=False)
    y = torch.rand(1000) * 1.4
    torch.testing.assert_close(unit(y), DorefaActivationQuantizer(3)(y))  # c = 1: the paper's


# ---- methods ---------------------------------------------------------------------------------


def test_batch_statistics_normalises_by_the_batch_and_keeps_the_running_statistics() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    x = torch.randn(16, 3) * 3 + 1
    with torch.no_grad(), batch_statistics(model):
        out = model(x)
    h = model[0](x).detach()
    torch.testing.assert_close(out, torch.relu((h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt()))
    assert all(torch.equal(v, model[1].state_dict()[k]) for k, v in before.items())  # count included
    assert not model[1].training and model[1].track_running_stats and not model[0].training


def _model_and_method(tmp_path: Path, *overrides: str) -> tuple[nn.Module, object]:
    from qnnrun.build import build_quantized_model
    from qnnrun.data import dataset_info

    cfg = compose_config(list(overrides), data_dir=tmp_path)
    return build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))


def test_dorefa_act_clip_chooses_the_input_quantizer(tmp_path: Path) -> None:
    def inputs(*overrides: str) -> list[nn.Module]:
        model, _ = _model_and_method(tmp_path, "method=dorefa", "bits=2", *overrides)
        return [layer.input_quant for _, layer in quant_layers(model)]

    assert [type(q) for q in inputs()] == [DorefaActivationQuantizer]  # the paper's [0, 1]
    (level,) = inputs("method.act_clip=2.5")
    assert isinstance(level, PactQuantizer) and level.alpha.item() == 2.5 and level.init == "fixed"
    model, method = _model_and_method(tmp_path, "method=dorefa", "bits=2", "method.act_clip=mse")
    (searched,) = [layer.input_quant for _, layer in quant_layers(model)]
    assert searched.init == "mse" and not any(p is searched.alpha for p in model.parameters())
    method.prepare(model, [torch.rand(16, 1, 8, 8) for _ in range(2)])
    assert searched.initialized and searched.alpha.item() != 1.0
    (name, _), = quant_layers(model)
    assert method.scalars(model)[f"dorefa/clip/{name}"] == searched.alpha.item()


@pytest.mark.parametrize(("overrides", "feeder"), [
    (["model=mlp"], "features.6"), (["model=mlp", "model.dropout=0.2"], "features.7"),  # across the dropout
    (["model=resnet20", "dataset=cifar10"], "layer3.2.relu2"), (["model=lenet5", "dataset=cifar10"], "classifier.6")])
def test_dorefa_clips_the_float_last_layers_input_to_the_unit_interval(tmp_path: Path, overrides: list[str],
                                                                      feeder: str) -> None:
    """tensorpack's alexnet-dorefa.py / resnet-dorefa.py feed the float fct ``clip_by_value(x, 0, 1)``
    (``nonlin``): the ReLU in front of the last layer becomes a hard-tanh(0, 1), before the pooling."""
    model, _ = _model_and_method(tmp_path, "method=dorefa", "bits=2", *overrides)
    assert isinstance(model.get_submodule(feeder), nn.Hardtanh)
    assert (model.get_submodule(feeder).min_val, model.get_submodule(feeder).max_val) == (0.0, 1.0)
    assert sum(isinstance(m, nn.Hardtanh) for m in model.modules()) == 1
    for other in (["method.clip_last_input=false"], ["quant.last_layer=8"], ["method.act_clip=2.0"], ["bits.a=32"]):
        model, _ = _model_and_method(tmp_path, "method=dorefa", "bits=2", *overrides, *other)
        assert isinstance(model.get_submodule(feeder), nn.ReLU), other  # quantized input, other clip, float
    old = saved_config({**OmegaConf.to_container(compose_config(["method=dorefa"]), resolve=True),
                        "method": {"name": "dorefa", "grad_bits": 32, "act_clip": 1.0}})
    assert old.method.clip_last_input is False  # a run saved before the option keeps its ReLU


def test_dorefa_keeps_the_image_float_and_refuses_it_on_the_unit_interval(tmp_path: Path) -> None:
    """DoReFa's [0, 1] would drop the normalised image's negative half: a quantized first layer keeps
    its image input float; asked to quantize it at [0, 1], calibration refuses with one line; at an
    act_clip level the image is clipped symmetrically from its largest |x|."""
    image = torch.randn(16, 1, 8, 8)
    model, method = _model_and_method(tmp_path, "method=dorefa", "bits=2", "quant.first_layer=8")
    method.prepare(model, [image])
    (_, first), *rest = quant_layers(model)
    assert first.input_quant is None and first.weight_quant.bits == 8
    assert all(not layer.input_quant.image_input for _, layer in rest)
    model, method = _model_and_method(tmp_path, "method=dorefa", "bits=2", "quant.first_layer=8",
                                      "quant.image_input_bits=8")
    with pytest.raises(QnnrunError, match=r"act_clip=1 clips .*quant.image_input_bits=32"):
        method.prepare(model, [image])
    model, method = _model_and_method(tmp_path, "method=dorefa", "bits=2", "quant.first_layer=8",
                                      "quant.image_input_bits=8", "method.act_clip=1.5")
    method.prepare(model, [image])
    (_, first), *rest = quant_layers(model)
    assert first.input_quant.signed is True and first.input_quant.alpha.item() == image.abs().max().item()
    assert all(layer.input_quant.alpha.item() == 1.5 for _, layer in rest)


def test_pact_regularization_is_half_decay_times_squared_alphas(tmp_path: Path) -> None:
    model, method = _model_and_method(tmp_path, "method=pact", "method.alpha_decay=0.01", "method.alpha_init=3")
    alphas = [m.alpha for m in model.modules() if isinstance(m, PactQuantizer)]
    assert len(alphas) == 3  # the MLP's three layers, first and last at 8 bits
    penalty = method.regularization(model)
    assert penalty.item() == pytest.approx(0.5 * 0.01 * 3 * 9.0)
    penalty.backward()
    assert all(a.grad.item() == pytest.approx(0.01 * 3.0) for a in alphas)
    _, off = _model_and_method(tmp_path, "method=pact", "method.alpha_decay=0")
    assert off.regularization(model) is None


def test_layer_policies_of_the_baselines(tmp_path: Path) -> None:
    # The MLP's three layers; DoReFa's float first and last layers stay plain nn.Linear.
    for name, expected in (("lsq", [(8, 8), (2, 2), (8, 8)]), ("pact", [(8, 8), (2, 2), (8, 8)]),
                           ("dorefa", [(2, 2)])):
        model, _ = _model_and_method(tmp_path, f"method={name}", "bits=2")
        bits = [(layer.weight_bits, layer.input_bits) for _, layer in quant_layers(model)]
        assert bits == expected


@pytest.mark.parametrize("bits,factor", [("2", 0.25), ("3", 0.5), ("4", 1.0), ("8", 1.0)])
def test_lsq_weight_decay_follows_the_papers_precision_rule(tmp_path: Path, bits: str, factor: float) -> None:
    """LSQ section 3 / Table 2: weight decay halved at 3 bits, quartered at 2, on conv/linear weights only."""
    model, method = _model_and_method(tmp_path, "method=lsq", f"bits={bits}", "optim.weight_decay=4e-4")
    decayed, free = method.param_groups(model, 4e-4)
    assert decayed["weight_decay"] == pytest.approx(4e-4 * factor)
    assert free["weight_decay"] == 0.0 and any(p.dim() == 0 for p in free["params"])  # the steps
    _, off = _model_and_method(tmp_path, "method=lsq", f"bits={bits}", "method.low_bit_weight_decay=false")
    assert off.param_groups(model, 4e-4)[0]["weight_decay"] == 4e-4


@pytest.mark.parametrize("override,message", [
    ("method=lsq method.low_bit_weight_decay=1", "method.low_bit_weight_decay=1"),
    ("method=dorefa method.grad_bits=40", "method.grad_bits=40"),
    ("method=pact method.alpha_init=0", "method.alpha_init=0"),
    ("method=pact method.alpha_init=max", "method.alpha_init='max' is not valid: expected a number > 0 or mse"),
    ("method=pact method.alpha_decay=-1", "method.alpha_decay=-1"),
    ("method=dorefa method.act_clip=-1", "method.act_clip=-1 is not valid: expected a number > 0 or mse"),
    ("method=lsq method.learned_offset=3", "method.learned_offset=3"),
    ("method=lsq method.act_init=max", "method.act_init='max'"),
    ("method=lsq method.min_step_ratio=1", "method.min_step_ratio=1"),
])
def test_bad_method_options_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    cfg = compose_config(override.split(), data_dir=tmp_path)
    with pytest.raises(QnnrunError, match=message.replace(".", r"\.")) as error:
        build_method(cfg)
    assert "\n" not in str(error.value)


# ---- real trainings on digits ----------------------------------------------------------------


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    cfg = compose_config(list(overrides), data_dir=tmp_path / "data")
    return train(cfg, tmp_path / name)


def test_lsq_w2a2_learns_and_logs_its_steps(tmp_path: Path) -> None:
    summary = _train(tmp_path, "lsq", "method=lsq", "bits=2", "trainer.epochs=3")
    assert summary["test_acc"] >= 90.0
    history = load_checkpoint(tmp_path / "lsq" / "last.ckpt")["history"]
    steps = {k: [h[k] for h in history] for k in history[-1] if k.startswith("quant/lsq/step/")}
    assert len(steps) == 6  # weight and input of three layers
    assert all(series[0] != series[-1] for series in steps.values())  # the steps were learned
    cfg = compose_config([f"checkpoint={tmp_path / 'lsq'}"], config_name="eval", data_dir=tmp_path / "data")
    line = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    assert f"top-1 {summary['test_acc']:.2f}%" in line  # steps, signs and init flags come back


def test_lsq_plus_offset_per_channel_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "lsqp", "method=lsq", "bits=3", "method.learned_offset=true", "quant.per_channel=true",
                     "trainer.epochs=2")
    assert summary["test_acc"] >= 90.0
    history = load_checkpoint(tmp_path / "lsqp" / "last.ckpt")["history"]
    assert any(k.startswith("quant/lsq/offset/") for k in history[-1])


def test_lsq_mse_init_fine_tunes_a_float_net(tmp_path: Path) -> None:
    """``method.act_init=mse``, W2A2 from a trained float MLP."""
    _train(tmp_path, "float", "method=fp", "trainer.epochs=3")
    start = f"init_from={tmp_path / 'float' / 'last.ckpt'}"
    summary = _train(tmp_path, "mse", "method=lsq", "bits=2", "method.act_init=mse", start, "trainer.epochs=2")
    assert summary["test_acc"] >= 90.0


def test_lsq_mse_init_from_scratch_learns_with_the_step_floor(tmp_path: Path) -> None:
    """From random weights the MSE start of the 8-bit classifier input is small enough for the first
    update to carry it below zero (0.0050 -> -0.0006); held at its floor, the net learns."""
    summary = _train(tmp_path, "scratch", "method=lsq", "bits=2", "method.act_init=mse", "trainer.epochs=3")
    assert summary["test_acc"] >= 90.0


def test_lsq_from_scratch_starts_its_steps_on_batch_statistics_and_learns_without_the_floor(tmp_path: Path) -> None:
    """The paper's start (the first batch of activations as training sees them) with no floor learns
    from random weights; started on the running statistics (0, 1) instead, it stayed at 10% (seeds 0, 1)."""
    summary = _train(tmp_path, "scratch", "method=lsq", "bits=2", "method.act_init=mse", "method.min_step_ratio=0",
                     "trainer.epochs=3")
    assert summary["test_acc"] >= 90.0


def test_dorefa_w2a2_with_8bit_gradients_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "dorefa", "method=dorefa", "bits=2", "method.grad_bits=8", "trainer.epochs=3")
    assert summary["test_acc"] >= 90.0


def test_dorefa_act_clip_mse_fine_tunes_a_float_net(tmp_path: Path) -> None:
    """``method.act_clip=mse``, W2A2 from a trained float MLP: the searched level stays where it started,
    and comes back from the checkpoint."""
    _train(tmp_path, "float", "method=fp", "trainer.epochs=3")
    start = f"init_from={tmp_path / 'float' / 'last.ckpt'}"
    summary = _train(tmp_path, "clip", "method=dorefa", "bits=2", "method.act_clip=mse", start, "trainer.epochs=2")
    assert summary["test_acc"] >= 90.0
    history = load_checkpoint(tmp_path / "clip" / "last.ckpt")["history"]
    levels = [[h[k] for h in history] for k in history[0] if k.startswith("quant/dorefa/clip/")]
    assert len(levels) == 1 and levels[0][0] == levels[0][-1] and levels[0][0] > 1.0
    cfg = compose_config([f"checkpoint={tmp_path / 'clip'}"], config_name="eval", data_dir=tmp_path / "data")
    line = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    assert f"top-1 {summary['test_acc']:.2f}%" in line


def test_pact_w2a2_learns_and_its_clip_levels_move(tmp_path: Path) -> None:
    summary = _train(tmp_path, "pact", "method=pact", "bits=2", "trainer.epochs=4")
    assert summary["test_acc"] >= 85.0
    history = load_checkpoint(tmp_path / "pact" / "last.ckpt")["history"]
    alphas = [k for k in history[-1] if k.startswith("quant/pact/alpha/")]
    assert len(alphas) == 3
    assert all(history[-1][k] < 10.0 for k in alphas)  # pulled down by the L2 penalty from 10


def test_pact_mse_start_fine_tunes_a_float_net(tmp_path: Path) -> None:
    """``method.alpha_init=mse``, W2A2 from a trained float MLP; the searched levels come back from
    the checkpoint (an evaluation does not search again)."""
    _train(tmp_path, "float", "method=fp", "trainer.epochs=3")
    start = f"init_from={tmp_path / 'float' / 'last.ckpt'}"
    summary = _train(tmp_path, "mse", "method=pact", "bits=2", "method.alpha_init=mse", start, "trainer.epochs=2")
    assert summary["test_acc"] >= 90.0
    history = load_checkpoint(tmp_path / "mse" / "last.ckpt")["history"]
    alphas = [history[0][k] for k in history[0] if k.startswith("quant/pact/alpha/")]
    assert len(alphas) == 3 and all(0 < a < 10.0 for a in alphas)
    cfg = compose_config([f"checkpoint={tmp_path / 'mse'}"], config_name="eval", data_dir=tmp_path / "data")
    line = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    assert f"top-1 {summary['test_acc']:.2f}%" in line


# ---- wiring: each method gives its layers the quantizers its definition names -------------------
def _built(*overrides: str) -> list[tuple[str, nn.Module]]:
    from qnnrun.build import build_quantized_model
    from qnnrun.data import dataset_info

    cfg = compose_config(["bits=2", "quant.first_layer=same", "quant.last_layer=same", *overrides])
    model, _ = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    return quant_layers(model)


def test_lsq_and_ste_wire_their_quantizers_as_defined() -> None:
    """What the formula tests cannot see: LSQ's input quantizers count N per sample (``activations``:
    a batch-wide N made g sqrt(B) too small and passed every other test), its weights are signed with
    one step per layer; ste's weights are signed max-abs per channel, its inputs an EMA range whose sign is found."""
    from qnnrun.quant.quantizers import UniformQuantizer

    for _, layer in _built("method=lsq"):
        weight, inputs = layer.weight_quant, layer.input_quant
        assert isinstance(weight, LsqQuantizer) and weight.signed is True and not weight.activations
        assert not weight.per_channel and weight.step.numel() == 1  # one step per layer, as in the paper
        assert isinstance(inputs, LsqQuantizer) and inputs.activations and inputs.auto_signed
    for _, layer in _built("method=ste"):
        weight, inputs = layer.weight_quant, layer.input_quant
        assert isinstance(weight, UniformQuantizer) and weight.signed is True and weight.per_channel
        assert weight.range_mode == "dynamic" and weight.estimator == "clipped"
        assert isinstance(inputs, UniformQuantizer) and inputs.auto_signed and not inputs.per_channel
        assert inputs.range_mode == "ema"


@pytest.mark.parametrize("grad_bits", [2, 32])
def test_dorefa_quantizes_the_gradient_reaching_each_weight_quantized_layer(grad_bits: int) -> None:
    """The gradient at a quantized layer's output lies, per sample, on DoReFa's k-bit grid scaled by
    its largest magnitude (``method.grad_bits``); with 32 it is left as it is (the test can fail)."""
    torch.manual_seed(0)
    [(_, layer)] = _built("method=dorefa", "quant.first_layer=fp", "quant.last_layer=fp",
                          f"method.grad_bits={grad_bits}")
    seen = {}
    layer.register_forward_hook(lambda m, i, o: o.register_hook(lambda g: seen.__setitem__("g", g)) and None,
                                prepend=True)  # the layer's raw output, before DoReFa's hook takes its place
    layer.train()
    out = layer(torch.randn(32, layer.in_features))
    (out * torch.randn_like(out)).sum().backward()
    grad = seen["g"]
    codes = (grad / (2 * grad.abs().amax(1, keepdim=True)) + 0.5) * (2**2 - 1)
    assert torch.allclose(codes, codes.round(), atol=1e-4) == (grad_bits == 2)


def test_dorefa_warns_when_its_0_1_clip_zeroes_negative_inputs(caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's activation quantizer is fed ReLU outputs; on inputs with negative values (here the
    default MLP with its ReLUs replaced by tanh) its clip adds a ReLU the float net lacks: one warning
    names the layers (a MobileNetV2's linear bottlenecks: 17 of 51 inputs)."""
    from qnnrun.build import build_quantized_model
    from qnnrun.data import dataset_info

    from qnnrun.methods import dorefa

    monkeypatch.setattr(dorefa, "_WARNED", set())
    cfg = compose_config(["method=dorefa", "bits=2"])
    model, method = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    relu_fed = [torch.randn(16, 1, 8, 8)]
    with caplog.at_level("WARNING", logger="qnnrun"):
        method.prepare(model, relu_fed)
    assert not [r for r in caplog.records if "negative inputs" in r.message]
    for module in model.modules():  # the same net with its ReLUs gone: signed inputs everywhere
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Tanh())
    with caplog.at_level("WARNING", logger="qnnrun"):
        method.prepare(model, relu_fed)
    method.prepare(model, relu_fed)  # again (qnnrun sensitivity calibrates per layer): no second warning
    [record] = [r for r in caplog.records if "negative inputs" in r.message]
    assert record.message.startswith("dorefa: negative inputs at features.4: method.act_clip=1 clips them")
