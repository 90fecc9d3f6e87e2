"""``torch.compile`` leaves the quantizers' numbers unchanged: compiled == eager on the CPU.

Every quantizer is compiled with ``fullgraph=True`` (which fails on any graph break) by inductor,
the backend ``trainer.compile=true`` uses, and its output and gradients are compared with eager
mode bit for bit (``torch.equal``). What inductor does differently by design is kept out of the
comparison where it applies, and only there:

* It sums in another order than ATen. Where a quantizer reduces (mean ``|x|`` of the sign and TWN
  scales, the learned-step and PACT-clip gradients), the inputs lie on a dyadic grid (multiples
  of 1/32; power-of-two steps where a step gradient is summed), so every partial sum is exact in
  float32 and the order cannot matter; a different formula or rounding rule would still show. The
  normal fit of the k-quantile quantizer (a Welford pass) is computed eagerly and passed in.
  DoReFa's weight gradient holds a sum over the whole tensor (the max normalisation): compared to
  32 ulp of its largest value.
* Its ``ndtr`` / ``ndtri`` differ from ATen's in the last bits: UNIQ's training noise, a smooth
  map without rounding, is compared to 16 ulp of its largest value.
* It draws its own random numbers: UNIQ's noise is passed in.

A whole quantized model is compared twice: graph capture alone (``aot_eager``: dynamo, AOT
autograd, functionalised buffer updates, the custom backward functions in the joint graph), bit
for bit with BatchNorm; and through inductor (``slow``), without BatchNorm, whose training-mode
statistics inductor reduces in its own order (that moves values across the rounding boundaries
of the next quantizer, as it does for a float ResNet-20's gradients by about 1%).
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
import torch._dynamo
from hydra_utils import compose_config
from torch import Tensor, nn

from qnnrun.build import build_quantized_model
from qnnrun.data import dataset_info
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import ChannelState, QuantConv2d
from qnnrun.quant.learned import LsqQuantizer, PactQuantizer
from qnnrun.quant.quantizers import AsymptoticQuantizer, UniformQuantizer

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                reason="inductor on the CPU needs a C++ compiler (g++ or clang++)")

ULP = torch.finfo(torch.float32).eps  # 2^-23


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch.manual_seed(0)
    torch._dynamo.reset()


def dyadic(*shape: int, limit: int = 96) -> Tensor:
    """Random multiples of 1/32 in ``[-limit/32, limit/32]``: sums of these are exact in float32."""
    return torch.randint(-limit, limit + 1, shape).float() / 32


def run(fn: Callable[..., Tensor], inputs: Sequence[Tensor], grad_out: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``fn(*inputs)`` and the gradients of ``<out, grad_out>`` to every input that requires one."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad_out)
    return out.detach(), list(grads)


def run_module(call: Callable[[Tensor], Tensor], module: nn.Module, x: Tensor, grad_out: Tensor
               ) -> tuple[Tensor, list[Tensor]]:
    """``call(x)`` and the gradients of ``<out, grad_out>`` to ``x`` and ``module``'s parameters."""
    x = x.detach().clone().requires_grad_()
    out = call(x)
    grads = torch.autograd.grad(out, [x, *(p for p in module.parameters() if p.requires_grad)], grad_out)
    return out.detach(), list(grads)


# ---- quantizer functions -------------------------------------------------------------------


@dataclass
class Case:
    """A quantizer call ``fn(*inputs)``, the upstream gradient of its output and the tolerances."""

    fn: Callable[..., Tensor]
    inputs: list[Tensor]
    grad_out: Tensor
    grad_ulps: int = 0  # 0: bit-exact gradients; else within this many ulp of the largest gradient
    out_ulps: int = 0  # the same for the output


def quantizer_cases() -> dict[str, Case]:
    """Every quantizer function with inputs that exercise its clipping, rounding and gradients."""
    torch.manual_seed(0)
    weight, weight_dyadic = torch.randn(16, 8, 3, 3), dyadic(16, 8, 3, 3)
    acts, acts_dyadic = torch.randn(32, 60) * 1.5, dyadic(32, 60)
    scale_c, zero_c = torch.rand(16, 1) * 0.2 + 0.05, torch.randint(0, 4, (16, 1)).float()
    step_any = torch.rand(32, 1) * 0.5 + 0.1
    step_pow2 = torch.tensor([0.25, 0.5]).repeat(16).view(32, 1)  # exact step gradient sums
    alpha, offset = torch.tensor(1.5), torch.tensor(-0.5)
    noise = (torch.rand(16, 8, 3, 3) * 2 - 1) / 8
    # The normal fit is a plain reduction (std: a Welford pass in an order inductor chooses), so it
    # is computed eagerly; the k-quantile binning and levels are what is compared.
    fit = Q.gaussian_fit(weight)
    g_w, g_a = dyadic(16, 8, 3, 3, limit=32), dyadic(32, 60, limit=32)

    def case(fn: Callable[..., Tensor], *inputs: Tensor, grad_ulps: int = 0, out_ulps: int = 0) -> Case:
        grad_out = g_w if inputs[0].shape == g_w.shape else g_a
        return Case(fn, [t.clone().requires_grad_() for t in inputs], grad_out, grad_ulps, out_ulps)

    return {
        "uniform_tensor_w2_clipped": case(lambda x: Q.fake_quantize(x, torch.tensor(0.173), 0.0, -2, 1), acts),
        "uniform_tensor_a4_ste": case(lambda x: Q.fake_quantize(x, torch.tensor(0.173), 0.0, 0, 15, "ste"), acts),
        "uniform_channel_maxabs": case(
            lambda w: Q.uniform_quantize(w, Q.maxabs_scale(Q.channel_amax(w, True), 2, True), 2, True), weight),
        "affine_channel_zero_point": case(lambda x: Q.fake_quantize(x, scale_c.repeat(2, 1), zero_c.repeat(2, 1), 0, 3),
                                          acts),
        "sign_mean_abs": case(lambda w: Q.sign_quantize(w, Q.channel_mean_abs(w, True)), weight_dyadic),
        "binary_clipped_ste": case(lambda x: Q.clipped_ste(x, Q.binary_levels(x)), acts),
        "linear_levels_2bit": case(lambda x: Q.clipped_ste(x, Q.linear_levels(x, 2)), acts),
        "pow2_levels_3bit": case(lambda x: Q.clipped_ste(x, Q.pow2_levels(x, 3)), acts),
        "ternary_twn": case(lambda w: Q.ternary_quantize(w, *Q.twn_threshold_and_scale(w)), weight_dyadic),
        "lsq_any_step": case(lambda x: Q.lsq_quantize(x, step_any, -2, 1, 0.05), acts),
        "lsq_step_gradient": case(lambda x, s: Q.lsq_quantize(x, s, -2, 1, 0.125), acts_dyadic, step_pow2),
        "lsq_binary_step_gradient": case(lambda x, s: Q.lsq_quantize(x, s, -1, 1, 0.125), acts_dyadic, step_pow2),
        "lsq_plus_offset": case(lambda x, s, b: Q.lsq_quantize(x, s, 0, 15, 0.125, b), acts_dyadic, step_pow2, offset),
        "dorefa_weight_1bit": case(lambda w: Q.dorefa_weight(w, 1), weight_dyadic),
        # The gradient of the max normalisation is a sum over the tensor, reduced in inductor's
        # order (about 10 ulp of the largest gradient seen): compared to 32 ulp of it.
        "dorefa_weight_2bit": case(lambda w: Q.dorefa_weight(w, 2), weight * 0.1, grad_ulps=32),
        "dorefa_activation": case(lambda x: Q.dorefa_activation(x, 2), acts),
        "pact_unsigned": case(lambda x, a: Q.pact_quantize(x, a, 2), acts_dyadic, alpha),
        "pact_signed": case(lambda x, a: Q.pact_quantize(x, a, 3, signed=True), acts_dyadic, alpha),
        "kquantile_uniq": case(lambda w: Q.kquantile_quantize(w, 2, *fit), weight),
        # UNIQ's training noise is smooth (Phi, noise, Phi^-1; no rounding), and inductor's own
        # ndtr / ndtri differ from ATen's in the last bits (about 5 ulp of the largest value).
        "kquantile_noise_uniq": case(lambda w: Q.kquantile_noise(w, 2, *fit, noise), weight, grad_ulps=16,
                                     out_ulps=16),
        "kquantile_noise_uniq_through": case(lambda w: Q.kquantile_noise(w, 2, *fit, noise, "through"), weight,
                                             grad_ulps=16, out_ulps=16),
    }


def compare_case(name: str, case: Case, eager: tuple[Tensor, list[Tensor]],
                 compiled: tuple[Tensor, list[Tensor]]) -> None:
    if case.out_ulps:
        tolerance = case.out_ulps * ULP * float(eager[0].abs().max())
        torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=tolerance, msg=f"{name}: output")
    else:
        assert torch.equal(compiled[0], eager[0]), f"{name}: outputs differ"
    for index, (a, b) in enumerate(zip(eager[1], compiled[1], strict=True)):
        assert a.abs().sum() > 0, f"{name}: no gradient reaches input {index}"  # not a comparison of zeros
        if case.grad_ulps:
            tolerance = case.grad_ulps * ULP * float(a.abs().max())
            torch.testing.assert_close(b, a, rtol=0, atol=tolerance, msg=f"{name}: input {index}")
        else:
            assert torch.equal(b, a), f"{name}: gradients to input {index} differ"


# One of each quantizer family (the default run); every case, each in its own graph: slow tests.
CORE = ("uniform_tensor_w2_clipped", "uniform_channel_maxabs", "sign_mean_abs", "binary_clipped_ste",
        "ternary_twn", "lsq_step_gradient", "dorefa_weight_2bit", "dorefa_activation", "pact_unsigned",
        "kquantile_uniq")


def test_quantizer_families_compiled_in_one_graph_equal_eager() -> None:
    # One graph for all of them: inductor's C++ build costs seconds per graph on a CPU; the cases
    # are independent, so compiling them together changes no value.
    cases = {name: case for name, case in quantizer_cases().items() if name in CORE}
    counts = [len(c.inputs) for c in cases.values()]

    def together(*inputs: Tensor) -> tuple[Tensor, ...]:
        outputs, start = [], 0
        for case, count in zip(cases.values(), counts):
            outputs.append(case.fn(*inputs[start:start + count]))
            start += count
        return tuple(outputs)

    leaves = [t for c in cases.values() for t in c.inputs]
    grad_outs = [c.grad_out for c in cases.values()]
    results = []
    for fn in (together, torch.compile(together, fullgraph=True)):
        inputs = [t.detach().clone().requires_grad_() for t in leaves]
        outputs = fn(*inputs)
        grads = torch.autograd.grad(outputs, inputs, grad_outs)
        results.append((outputs, grads))
    start = 0
    for index, (name, case) in enumerate(cases.items()):
        picked = [(r[0][index].detach(), list(r[1][start:start + counts[index]])) for r in results]
        compare_case(name, case, *picked)
        start += counts[index]


with torch.random.fork_rng():  # collecting the names leaves the global random state alone
    CASE_NAMES = list(quantizer_cases())


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_each_quantizer_compiled_alone_equals_eager(name: str) -> None:
    case = quantizer_cases()[name]
    compare_case(name, case, run(case.fn, case.inputs, case.grad_out),
                 run(torch.compile(case.fn, fullgraph=True), case.inputs, case.grad_out))


def test_at_least_equals_the_comparison_at_the_edges() -> None:
    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([-math.inf, -1.5, -tiny / 4, -0.0, 0.0, tiny / 4, 1.0, 1.5, 1.5 + 2 * ULP, 3e38, math.inf])
    for bound in (0.0, -0.0, 1.5, torch.tensor(1.5), -tiny / 4, -1.5):
        assert torch.equal(Q.at_least(values, bound), (values >= bound).float()), bound
        assert torch.equal(Q.at_least(bound, values), (values <= bound).float()), bound


@pytest.mark.parametrize("name", CASE_NAMES)
def test_float_masks_give_the_boolean_masks_gradients(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The masks a graph compiled for the CPU builds (float 0/1 from floor and clamp), run eagerly.
    case = quantizer_cases()[name]
    boolean = run(case.fn, case.inputs, case.grad_out)
    monkeypatch.setattr(Q, "float_masks", lambda x: True)
    as_float = run(case.fn, case.inputs, case.grad_out)
    assert torch.equal(as_float[0], boolean[0]), f"{name}: outputs differ"
    for index, (a, b) in enumerate(zip(boolean[1], as_float[1], strict=True)):
        assert torch.equal(b, a), f"{name}: gradients to input {index} differ"


# ---- quantizer modules in training mode (state updated inside the graph) ---------------------


class Side(nn.Module):
    """Modules side by side: ``forward(xs)`` applies the i-th module to the i-th input."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, *xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(part(x) for part, x in zip(self.parts, xs, strict=True))


def test_quantizer_modules_with_state_updated_in_the_graph() -> None:
    # Uniform activations with an EMA range (method=ste), LSQ with learned per-channel steps,
    # PACT with a learned clip, AQE's mixtures with an EMA ternary threshold: equal outputs,
    # gradients to the inputs and every parameter, and equal buffers afterwards.
    uniform = UniformQuantizer(2, signed=None, range_mode="ema", momentum=0.25)
    uniform(torch.rand(8, 4, 5, 5))  # first observation: unsigned, range
    lsq = LsqQuantizer(2, signed=True, channels=8)
    with torch.no_grad():
        lsq.step.copy_(torch.tensor([0.25, 0.5]).repeat(4))
    lsq.initialized = True
    pact = PactQuantizer(2, alpha_init=1.5)
    pact.signed = False
    aqe = [AsymptoticQuantizer(kind, bits, alpha=0.5, threshold_momentum=0.25)
           for kind, bits in (("sign", 1), ("ternary", 2), ("pow2", 3))]
    aqe[1](dyadic(8, 4, 5, 5))  # first observation of the threshold
    module = Side(uniform, lsq, pact, *aqe).train()
    xs = [dyadic(8, 4, 5, 5).relu(), dyadic(8, 4, 3, 3), dyadic(8, 4, 5, 5), *(dyadic(8, 4, 5, 5) for _ in aqe)]
    grad_outs = [dyadic(*x.shape, limit=32) for x in xs]

    twin = copy.deepcopy(module)
    results = []
    for mod, call in ((module, module), (twin, torch.compile(twin, fullgraph=True))):
        inputs = [x.clone().requires_grad_() for x in xs]
        params = [p for p in mod.parameters() if p.requires_grad]
        outputs = call(*inputs)
        results.append(([o.detach() for o in outputs], torch.autograd.grad(outputs, inputs + params, grad_outs)))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    assert len(eager_grads) == len(xs) + 2  # and the LSQ steps, the PACT clip
    for index, (a, b) in enumerate(zip(eager_out, compiled_out, strict=True)):
        assert torch.equal(b, a), f"output {index}"
    for index, (a, b) in enumerate(zip(eager_grads, compiled_grads, strict=True)):
        assert torch.equal(b, a), f"gradient {index}"
    for (name, a), (_, b) in zip(module.named_buffers(), twin.named_buffers(), strict=True):
        assert torch.equal(b, a), name


# ---- a quantized layer and whole models ----------------------------------------------------


def mixed_state_conv(noisy: bool) -> QuantConv2d:
    """A 2-bit conv whose filters are FLOAT, QUANT, FROZEN (and NOISY): SQ's and UNIQ's mixed rows."""
    conv = QuantConv2d(4, 8, 3, padding=1, bias=False, weight_quant=UniformQuantizer(2, channels=8),
                       input_quant=UniformQuantizer(2, signed=True, range_mode="dynamic"))
    with torch.no_grad():
        conv.weight.copy_(dyadic(8, 4, 3, 3))
    conv.set_channel_state(ChannelState.FLOAT, torch.tensor([0, 5]))
    conv.set_channel_state(ChannelState.FROZEN, torch.tensor([2]))
    if noisy:
        conv.set_channel_state(ChannelState.NOISY, torch.tensor([7]))
    return conv


def test_layer_with_mixed_channel_states_compiles_without_graph_break() -> None:
    # Used to fail: reading the states in the forward synced the device (graph break), and dynamo
    # cannot trace ``tensor == IntEnum``. (A NOISY row draws noise, which inductor may lay out
    # differently from eager, so it is left to the no-graph-break check of the next test.)
    conv = mixed_state_conv(noisy=False)
    assert conv.present_states() == {ChannelState.FLOAT, ChannelState.QUANT, ChannelState.FROZEN}
    x, grad_out = dyadic(4, 4, 6, 6), dyadic(4, 8, 6, 6, limit=32)
    twin = copy.deepcopy(conv)
    eager_out, eager_grads = run_module(conv, conv, x, grad_out)
    compiled_out, compiled_grads = run_module(torch.compile(twin, fullgraph=True), twin, x, grad_out)
    assert torch.equal(compiled_out, eager_out)
    for eager, compiled in zip(eager_grads, compiled_grads, strict=True):
        assert torch.equal(compiled, eager)


def test_channel_states_are_recounted_after_load_state_dict() -> None:
    source = mixed_state_conv(noisy=True)
    target = QuantConv2d(4, 8, 3, padding=1, bias=False, weight_quant=UniformQuantizer(2, channels=8),
                         input_quant=UniformQuantizer(2, signed=True, range_mode="dynamic"))
    assert target.present_states() == {ChannelState.QUANT}
    target.load_state_dict(source.state_dict())
    assert target._present == {int(s) for s in ChannelState}  # known before the next forward
    torch.compile(target.train(), fullgraph=True)(torch.randn(2, 4, 6, 6))


def quantized_model(overrides: list[str], batch: int = 32) -> tuple[nn.Module, Tensor, Tensor]:
    """A model built and calibrated by ``method`` as a run does, in training mode, with a batch."""
    cfg = compose_config(overrides)
    info = dataset_info(cfg.dataset)
    model, method = build_quantized_model(cfg, info, torch.device("cpu"))
    images = torch.randn(batch, info.in_channels, info.image_size, info.image_size)
    method.prepare(model, [images])
    return model.train(), images, torch.randint(0, info.num_classes, (batch,))


def compare_model(model: nn.Module, images: Tensor, labels: Tensor, backend: str
                  ) -> tuple[Tensor, Tensor, list[tuple[str, Tensor, Tensor]], list[tuple[str, Tensor, Tensor]]]:
    """Logits (eager, compiled), parameter gradients and buffers after one forward + backward each."""
    twin = copy.deepcopy(model)
    outputs = []
    for call in (model, torch.compile(twin, fullgraph=True, backend=backend)):
        logits = call(images)
        nn.functional.cross_entropy(logits, labels).backward()
        outputs.append(logits.detach())
    grads = [(name, p.grad, q.grad) for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True)]
    buffers = [(name, a, b) for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True)]
    return outputs[0], outputs[1], grads, buffers


def test_whole_model_graph_capture_is_exact() -> None:
    # MLP with BatchNorm, ste W2A2: EMA activation ranges and BatchNorm statistics are updated
    # inside the captured graph; everything must match bit for bit.
    model, images, labels = quantized_model(["model=mlp", "dataset=digits", "method=ste", "bits=2"])
    eager, compiled, grads, buffers = compare_model(model, images, labels, backend="aot_eager")
    assert torch.equal(compiled, eager)
    assert all(a is not None for _, a, _ in grads)
    for name, a, b in grads + buffers:
        assert torch.equal(a, b), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ste", "lsq", "sq"])
def test_whole_model_through_inductor(method: str) -> None:
    # Without BatchNorm (inductor reduces its batch statistics in its own order, which moves a few
    # values across a rounding boundary of the next quantizer). The forward is bit-exact; parameter
    # gradients are summed over the batch in inductor's order, so they are compared to 64 ulp of
    # each tensor's largest gradient.
    model, images, labels = quantized_model(["model=mlp", "model.batch_norm=false", "dataset=digits",
                                             f"method={method}", "bits=2"])
    eager, compiled, grads, buffers = compare_model(model, images, labels, backend="inductor")
    assert torch.equal(compiled, eager)
    for name, a, b in grads:
        torch.testing.assert_close(b, a, rtol=0, atol=64 * ULP * float(a.abs().max()), msg=name)
    for name, a, b in buffers:
        assert torch.equal(a, b), name
