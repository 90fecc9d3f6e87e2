"""``trainer.recompute_quant``: quantized layers save their float input, not the quantized copy.

With it on, a quantized layer keeps ``x`` for backward and replays its input quantizer there
(:class:`qnnrun.quant.layers._ReplayedInput`). The step must be the same step: the same loss,
bit-identical gradients (weights, biases, LSQ steps, PACT clip levels) and the same state after
it (range statistics, thresholds are updated once, not again by the replay). And it must save
less: after a ReLU the layer's input is the tensor the ReLU keeps anyway.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hydra_utils import compose_config
from torch import Tensor, nn

from qnnrun.build import build_quantized_model
from qnnrun.data import dataset_info
from qnnrun.methods import METHODS
from qnnrun.methods.bnn import HardTanh
from qnnrun.metrics.memory import SavedForBackward
from qnnrun.quant.layers import QuantConv2d, QuantLinear, quant_layers, set_recompute_input
from qnnrun.quant.quantizers import UniformQuantizer


def prepared(method: str, overrides: list[str]) -> tuple[nn.Module, Tensor, Tensor, nn.Module]:
    """A calibrated quantized ResNet-20 (width 4) on CIFAR-shaped input in the middle of a run."""
    cfg = compose_config(["model=resnet20", "model.width=4", "dataset=cifar10", f"method={method}", "bits=2",
                          *overrides])
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model, bound = build_quantized_model(cfg, info, torch.device("cpu"))
    images = torch.randn(8, info.in_channels, info.image_size, info.image_size)
    labels = torch.randint(0, info.num_classes, (8,))
    epochs, steps_per_epoch = 10, 40
    bound.plan(epochs, steps_per_epoch)
    bound.set_calibration_source(lambda: iter([images]))
    bound.prepare(model, iter([images]))
    bound.on_epoch_start(model, 7, epochs)  # past every method's first stages
    bound.before_step(model, 7 * steps_per_epoch + 1)
    return model.train(), images, labels, bound.criterion(0.0)


def step(model: nn.Module, images: Tensor, labels: Tensor, criterion: nn.Module) -> tuple[Tensor, dict, int]:
    """Loss, gradients by parameter name, and the bytes saved for backward (each storage once)."""
    with SavedForBackward() as saved:
        loss = criterion(model(images), labels)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved.nbytes


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"fp"}))
def test_replayed_input_gives_the_same_step_and_saves_less(method: str) -> None:
    model, images, labels, criterion = prepared(method, [])
    replayed = copy.deepcopy(model)
    set_recompute_input(replayed, True)
    torch.manual_seed(1)  # UNIQ's weight noise, SQ's row draws
    loss, grads, saved = step(model, images, labels, criterion)
    torch.manual_seed(1)
    loss_r, grads_r, saved_r = step(replayed, images, labels, criterion)
    assert torch.isfinite(loss)
    assert torch.equal(loss, loss_r)
    assert grads.keys() == grads_r.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, grads_r[name]), f"{method}: gradient of {name} differs"
    quantizer_params = [n for n in grads if ".input_quant." in n]
    if quantizer_params:  # LSQ steps, PACT alphas: their gradients come back through the replay
        assert any(grads_r[n].abs().sum() > 0 for n in quantizer_params)
    for (name, buffer), (_, buffer_r) in zip(model.named_buffers(), replayed.named_buffers(), strict=True):
        assert torch.equal(buffer, buffer_r), f"{method}: buffer {name} differs (a replay updated state?)"
    assert saved_r < saved, f"{method}: saved {saved_r} bytes with the replay, {saved} without"


def test_after_relu_the_quantized_layers_save_no_more_than_float() -> None:
    """ste W2A2: with the replay, every quantized conv's input is the ReLU's saved output."""
    model, images, labels, criterion = prepared("ste", [])
    float_model, *_ = prepared("fp", [])
    set_recompute_input(model, True)
    *_, saved = step(model, images, labels, criterion)
    *_, saved_float = step(float_model, images, labels, criterion)
    # What remains on top of float: the quantized weights (small) and the 8-bit first/last layers' input copies.
    assert saved < 1.1 * saved_float


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_autocast_replays_exactly(kind: str) -> None:
    """QuantLinear over [B, T, F] input and a strided QuantConv2d with groups, under bf16
    autocast: the same output dtype, values and gradients both ways."""
    torch.manual_seed(0)
    input_quant = UniformQuantizer(3, signed=True, range_mode="ema")
    if kind == "linear":
        layer = QuantLinear(6, 5, input_quant=input_quant, weight_quant=UniformQuantizer(2, channels=5))
        x = torch.randn(4, 3, 6)
    else:
        layer = QuantConv2d(4, 6, 3, stride=2, padding=1, groups=2, input_quant=input_quant,
                            weight_quant=UniformQuantizer(2, channels=6))
        x = torch.randn(2, 4, 7, 7)
    replayed = copy.deepcopy(layer)
    set_recompute_input(replayed, True)
    outputs = []
    for module in (layer, replayed):
        source = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(source)
        out.float().square().sum().backward()
        outputs.append((out, source.grad, module.weight.grad, module.bias.grad, module.input_quant.stat.clone()))
    assert outputs[1][0].dtype == torch.bfloat16
    for plain, replay in zip(*outputs, strict=True):
        assert plain.dtype == replay.dtype
        assert torch.equal(plain, replay)


def test_the_plain_path_is_kept_where_the_replay_does_not_apply() -> None:
    """Evaluation, no_grad and a disabled input quantizer save or compute as before."""
    conv = QuantConv2d(3, 4, 3, padding=1, input_quant=UniformQuantizer(2, signed=False, range_mode="ema"))
    set_recompute_input(conv, True)
    x = torch.rand(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(conv(x), conv.compute(conv.input_quant(x), conv.effective_weight(), conv.bias))
    conv.input_quant.enabled = False
    out = conv(x.requires_grad_())
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    conv.input_quant.enabled = True
    assert type(conv(x).grad_fn).__name__ == "_ReplayedInputBackward"
    conv.eval()
    assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"


def test_the_engine_turns_it_on_from_the_config() -> None:
    cfg = compose_config(["model=mlp", "dataset=digits", "method=ste", "bits=2", "trainer.recompute_quant=true"])
    model, _ = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    assert all(layer.recompute_input for _, layer in quant_layers(model))


def test_hardtanh_that_saves_its_output_has_torchs_gradient() -> None:
    """BNN/QNN/AQE's hard-tanh keeps its output (the next layer's input) for backward, with the mask
    of ``nn.Hardtanh`` (strictly inside ``(-1, 1)``), also exactly at the clipping points."""
    x = torch.cat([torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 1.5]), torch.randn(50)])
    grad = torch.randn_like(x)
    reference = x.clone().requires_grad_()
    nn.Hardtanh()(reference).backward(grad)
    ours = x.clone().requires_grad_()
    saved: list[Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = HardTanh()(ours)
    out.backward(grad)
    assert torch.equal(out, nn.Hardtanh()(x))
    assert torch.equal(ours.grad, reference.grad)
    assert len(saved) == 1 and saved[0] is out
