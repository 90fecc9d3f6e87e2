"""Stochastic quantization (``method=sq``) and UNIQ (``method=uniq``): numerics, schedules, real trainings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config, train_interrupted_then_resumed
from scipy import stats

from qnnrun.build import build_quantized_model
from qnnrun.checkpoint import load_checkpoint
from qnnrun.data import dataset_info
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate_checkpoint
from qnnrun.methods.sq import (
    StochasticQuantization,
    float_row_count,
    sample_rows,
    split_epochs,
    stage_lengths,
    stage_of,
)
from qnnrun.methods.uniq import Uniq, split_blocks
from qnnrun.optim import method_lr_factor
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import ChannelState, QuantLinear, fully_quantized, quant_layers
from qnnrun.quant.quantizers import KQuantileQuantizer, TernaryQuantizer, UniformQuantizer

# ---- SQ numerics -------------------------------------------------------------------------------

WEIGHT = torch.tensor([[1.0, -0.2, 0.5, -0.9], [0.1, 0.05, -0.05, 0.0]])


def test_twn_threshold_scale_and_levels_by_hand() -> None:
    # mean |W| = 2.8 / 8 = 0.35, delta = 0.245; row 0 keeps 1, 0.5, 0.9 -> alpha 0.8; row 1 keeps none.
    delta, alpha = Q.twn_threshold_and_scale(WEIGHT)
    assert delta.item() == pytest.approx(0.245)
    assert alpha.flatten().tolist() == pytest.approx([0.8, 0.0])
    quantized = TernaryQuantizer(centered=False)(WEIGHT)
    assert torch.allclose(quantized, torch.tensor([[0.8, 0.0, 0.8, -0.8], [0.0, 0.0, 0.0, 0.0]]))


def test_twn_threshold_is_centred_by_default_as_the_authors_caffe_layers() -> None:
    """dongyp13/Stochastic-Quantization, TernaryConvolutionLayer::Forward_gpu: delta = 0.7 * mean |W - mean(W)|
    over the layer, compared with the uncentred weights; alpha_i = mean of the row's |w| above delta."""
    weight = torch.tensor([[1.0, 0.75, 0.5, 0.25]], dtype=torch.float64)  # mean 0.625
    # centred: |W - mean| = .375, .125, .125, .375 -> mean 0.25 -> delta 0.175: every entry above
    delta, alpha = Q.twn_threshold_and_scale(weight, 0.7, centered=True)
    assert delta.item() == 0.7 * 0.25 and alpha.flatten().tolist() == [0.625]
    assert torch.equal(TernaryQuantizer()(weight), torch.full_like(weight, 0.625))
    # uncentred (method.twn_centered=false): delta = 0.7 * 0.625 = 0.4375 drops 0.25
    delta, alpha = Q.twn_threshold_and_scale(weight, 0.7, centered=False)
    assert delta.item() == 0.7 * 0.625 and alpha.flatten().tolist() == [0.75]
    assert torch.equal(TernaryQuantizer(centered=False)(weight), torch.tensor([[0.75, 0.75, 0.75, 0.0]],
                                                                            dtype=torch.float64))
    layer = torch.nn.Linear(4, 1)
    method = StochasticQuantization(compose_config(["method=sq", "bits.w=2", "bits.a=32"]))
    assert method.weight_quantizer(layer, 2).centered
    off = StochasticQuantization(compose_config(["method=sq", "bits.w=2", "bits.a=32", "method.twn_centered=false"]))
    assert not off.weight_quantizer(layer, 2).centered


def test_ternary_and_binary_gradients_are_straight_through() -> None:
    weight = WEIGHT.clone().requires_grad_()
    (TernaryQuantizer(estimator="ste")(weight) * 3).sum().backward()
    assert torch.equal(weight.grad, torch.full_like(weight, 3.0))
    big = torch.tensor([[2.0, -0.5]], requires_grad=True)
    TernaryQuantizer(estimator="clipped")(big).sum().backward()
    assert big.grad.tolist() == [[0.0, 1.0]]  # clipped: |w| <= 1 only


def test_bwn_rows_are_mean_abs_times_sign() -> None:
    cfg = compose_config(["method=sq", "bits.w=1", "bits.a=32"])
    quantizer = StochasticQuantization(cfg).weight_quantizer(torch.nn.Linear(4, 2), 1)
    expected = torch.tensor([[0.65, -0.65, 0.65, -0.65], [0.05, 0.05, -0.05, 0.05]])
    assert torch.allclose(quantizer(WEIGHT), expected)


def test_row_relative_error_by_hand() -> None:
    quantized = TernaryQuantizer()(WEIGHT)
    errors = Q.row_relative_error(WEIGHT, quantized)
    assert errors.tolist() == pytest.approx([0.8 / 2.6, 1.0])
    assert Q.row_relative_error(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_single_draws_follow_the_error_proportional_probabilities() -> None:
    errors = torch.tensor([0.1, 0.2, 0.3, 0.4])
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.bincount(torch.cat([sample_rows(errors, 1, generator) for _ in range(draws)]), minlength=4)
    result = stats.chisquare(counts.numpy(), (errors / errors.sum() * draws).numpy())
    assert result.pvalue > 1e-3


def test_draws_without_replacement_match_the_exact_inclusion_probabilities() -> None:
    errors = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    p = errors / errors.sum()
    # P(i among 2 drawn) = p_i + sum_{j != i} p_j * p_i / (1 - p_j)
    exact = torch.stack([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)])
    generator = torch.Generator().manual_seed(1)
    draws = 20000
    picks = torch.stack([sample_rows(errors, 2, generator) for _ in range(draws)])
    assert all(len(set(row.tolist())) == 2 for row in picks[:100])  # without replacement
    frequency = torch.bincount(picks.flatten(), minlength=4).double() / draws
    assert torch.allclose(frequency, exact, atol=0.015)


def test_zero_error_rows_are_drawn_last_and_all_zero_is_uniform() -> None:
    generator = torch.Generator().manual_seed(2)
    for _ in range(200):
        assert set(sample_rows(torch.tensor([0.0, 0.5, 0.0, 0.25]), 2, generator).tolist()) == {1, 3}
    counts = torch.bincount(torch.cat([sample_rows(torch.zeros(4), 1, generator) for _ in range(4000)]))
    assert counts.min() > 850  # 1000 expected for each row


def test_float_row_count_and_stage_schedule() -> None:
    assert [float_row_count(10, r) for r in (0.5, 0.75, 0.875, 0.9, 1.0)] == [5, 2, 1, 1, 0]
    assert float_row_count(16, 0.875) == 2
    assert split_epochs(10, 4) == [3, 3, 2, 2]
    assert [stage_of(e, [3, 3, 2, 2]) for e in range(11)] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [stage_of(e, [0, 2, 0, 1]) for e in range(3)] == [1, 1, 3]
    assert stage_lengths("k", [1, 2], 2, 3) == [1, 2]
    with pytest.raises(QnnrunError, match="method.stage_epochs"):
        stage_lengths("method.stage_epochs", [1, 1], 2, 3)


def test_sq_stages_restart_the_lr_schedule_unless_shared() -> None:
    """Each SQ stage is a training run of its own (the paper): the schedule starts again at every stage
    (warm-up included); ``shared`` runs one schedule over the budget, as plain BWN / TWN (one stage) does."""
    def factors(*overrides: str) -> list[float]:
        cfg = compose_config(["method=sq", "trainer.epochs=8", *overrides])
        method = StochasticQuantization(cfg)
        method.plan(8, 10)  # stages of 2 epochs, 10 steps each
        return [method_lr_factor(cfg.sched, method, step, 10) for step in (0, 10, 19, 20, 30, 79)]

    def cosine(progress: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * progress))

    assert factors() == pytest.approx([1, cosine(10 / 20), cosine(19 / 20), 1, cosine(10 / 20), cosine(19 / 20)])
    shared = [cosine(step / 80) for step in (0, 10, 19, 20, 30, 79)]
    assert factors("method.stage_schedule=shared") == pytest.approx(shared)
    assert factors("method.ratios=[1.0]") == pytest.approx(shared)
    warm = factors("sched.warmup_epochs=1")
    assert warm[0] == pytest.approx(0.1) and warm[3] == pytest.approx(0.1)  # step 20 starts stage 2's warm-up
    with pytest.raises(QnnrunError, match="method.stage_schedule='cyclic' is not valid"):
        factors("method.stage_schedule=cyclic")


@pytest.mark.parametrize("grid_point,ratios", [("plain", [1.0]), ("sq", [0.5, 0.75, 0.875, 1.0]),
                                               ("plain_restarts", [1.0, 1.0, 1.0, 1.0])])
def test_sq_cifar10_arms_run_the_authors_solver_restarted_at_every_stage(grid_point: str,
                                                                        ratios: list[float]) -> None:
    """The authors' solver (CIFAR/ResNet-56/*/solver*.prototxt): SGD 0.1, momentum 0.9 (not Nesterov),
    weight decay 1e-4, lr x0.1 at 50% and 75% of every run (stepvalue 32000, 48000 of 64000), each SQ
    stage a run of its own. The three arms: plain for one stage, SQ over four, plain over four restarts."""
    cfg = compose_config(["experiment=sq_cifar10", f"grid_point={grid_point}"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (
        "sgd", 0.1, 0.9, False, 1e-4)
    assert list(cfg.method.ratios) == ratios and cfg.trainer.epochs == 40 * len(ratios)
    method = StochasticQuantization(cfg)
    steps_per_epoch = 3
    method.plan(cfg.trainer.epochs, steps_per_epoch)
    assert method.stage_epochs == [40] * len(ratios)
    factors = [method_lr_factor(cfg.sched, method, step, steps_per_epoch)
               for step in range(cfg.trainer.epochs * steps_per_epoch)]
    one_stage = [1.0] * (20 * steps_per_epoch) + [0.1] * (10 * steps_per_epoch) + [0.1**2] * (10 * steps_per_epoch)
    assert factors == one_stage * len(ratios)  # exact: the x0.1 drops at 50% and 75% of every stage
    for epoch, ratio in zip(range(0, cfg.trainer.epochs, 40), ratios, strict=True):
        method.on_epoch_start(torch.nn.Linear(1, 1), epoch, cfg.trainer.epochs)
        assert method.ratio == ratio


def test_sq_rejects_bad_ratios() -> None:
    with pytest.raises(QnnrunError, match="method.ratios"):
        StochasticQuantization(compose_config(["method=sq", "method.ratios=[0.5,1.5]"]))
    with pytest.raises(QnnrunError, match="method.ratios"):
        StochasticQuantization(compose_config(["method=sq", "method.ratios=[]"]))


def _digits_model(overrides: list[str]) -> tuple[torch.nn.Module, object, torch.Tensor]:
    cfg = compose_config(overrides)
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model, method = build_quantized_model(cfg, info, torch.device("cpu"))
    return model, method, torch.rand(16, info.in_channels, info.image_size, info.image_size)


def test_sq_step_keeps_the_drawn_rows_float_and_evaluates_fully_quantized() -> None:
    model, method, images = _digits_model(["method=sq", "bits.w=2", "bits.a=32", "trainer.epochs=4"])
    method.plan(4, 10)
    method.prepare(model, [images])
    method.on_epoch_start(model, 0, 4)  # r = 0.5
    assert method.ratio == 0.5
    method.before_step(model, 0)
    for _, layer in quant_layers(model):
        rows = layer.weight.shape[0]
        assert int((layer.channel_state == ChannelState.FLOAT).sum()) == rows // 2
        assert int((layer.channel_state == ChannelState.QUANT).sum()) == rows - rows // 2
    model(images).square().sum().backward()
    for _, layer in quant_layers(model):  # every row's float weight gets a gradient
        assert (layer.weight.grad.flatten(1).abs().sum(1) > 0).all()
    first = [layer.channel_state.clone() for _, layer in quant_layers(model)]
    method.after_optimizer_step(model, 0)
    for _, layer in quant_layers(model):
        assert (layer.channel_state == ChannelState.QUANT).all()
        assert torch.equal(layer.effective_weight(), layer.weight_quant(layer.weight))
    # The same epoch seed redraws the same rows (resume), the next epoch other ones.
    method.on_epoch_start(model, 0, 4)
    method.before_step(model, 0)
    assert all(torch.equal(a, layer.channel_state) for a, (_, layer) in zip(first, quant_layers(model), strict=True))
    method.after_optimizer_step(model, 0)
    scalars = method.scalars(model)
    assert scalars["sq_ratio"] == 0.5 and 0 < scalars["quant_error"] < 1


@pytest.mark.parametrize("selection", ["inverse_error", "uniform"])
def test_sq_other_selections_keep_the_same_float_row_count(selection: str) -> None:
    model, method, _ = _digits_model(["method=sq", "bits.w=2", "bits.a=32", f"method.selection={selection}",
                                      "method.ratios=[0.75]"])
    method.plan(1, 10)
    method.on_epoch_start(model, 0, 1)
    method.before_step(model, 0)
    for _, layer in quant_layers(model):
        assert int((layer.channel_state == ChannelState.FLOAT).sum()) == float_row_count(layer.weight.shape[0], 0.75)
    with pytest.raises(QnnrunError, match="method.selection"):
        StochasticQuantization(compose_config(["method=sq", "method.selection=best"]))


@pytest.mark.parametrize("selection", ["error", "inverse_error"])
def test_error_selections_keep_the_high_error_rows_float_more_often(selection: str) -> None:
    """Both draws give the low-error rows to quantization more often: ``error`` (the default) draws the
    float rows with probability proportional to the row's error, ``inverse_error`` the quantized rows
    proportional to 1/error (SQ's f(e) = 1/e)."""
    model, method, _ = _digits_model(["method=sq", "bits.w=2", "bits.a=32", f"method.selection={selection}",
                                      "method.ratios=[0.5]"])
    method.plan(1, 10)
    method.on_epoch_start(model, 0, 1)
    _, layer = quant_layers(model)[1]
    errors = Q.row_relative_error(layer.weight, layer.weight_quant(layer.weight))
    floated = torch.zeros(layer.weight.shape[0])
    for step in range(50):
        method.before_step(model, step)
        floated += (layer.channel_state == ChannelState.FLOAT).float()
        method.after_optimizer_step(model, step)
    low, high = errors.argsort()[:8], errors.argsort()[-8:]
    assert floated[high].mean() > floated[low].mean()


def test_sq_ratio_one_is_plain_twn() -> None:
    model, method, images = _digits_model(["method=sq", "bits.w=2", "bits.a=32", "method.ratios=[1.0]"])
    method.plan(2, 10)
    method.on_epoch_start(model, 0, 2)
    method.before_step(model, 0)
    layers = quant_layers(model)
    assert layers and all(isinstance(layer.weight_quant, TernaryQuantizer) for _, layer in layers)
    assert all((layer.channel_state == ChannelState.QUANT).all() for _, layer in layers)


def test_sq_layer_policy_and_uniform_rows_at_three_bits() -> None:
    model, _, _ = _digits_model(["method=sq", "bits.w=3", "bits.a=4"])
    layers = quant_layers(model)
    first = layers[0][1]
    assert first.input_quant is None and first.weight_bits == 3  # image input float, weights quantized
    assert all(isinstance(layer.weight_quant, UniformQuantizer) and layer.weight_quant.per_channel
               for _, layer in layers)
    assert all(layer.input_bits == 4 for _, layer in layers[1:])


# ---- UNIQ numerics -----------------------------------------------------------------------------


def kquantile_levels(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels and thresholds of the ``k = 2^bits``-quantile quantizer of a standard normal (float64).

    Levels ``Phi^-1((j + 0.5) / k)``, ``j = 0..k-1`` (the bin medians), shape ``(k,)``; thresholds
    ``Phi^-1(j / k)``, ``j = 1..k-1`` (the k-quantiles), shape ``(k - 1,)``.
    """
    k = 2**bits
    index = torch.arange(k, dtype=torch.float64)
    return torch.special.ndtri((index + 0.5) / k), torch.special.ndtri(index[1:] / k)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_kquantile_levels_match_scipy(bits: int) -> None:
    k = 2**bits
    levels, thresholds = kquantile_levels(bits)
    assert torch.allclose(levels, torch.tensor(stats.norm.ppf((torch.arange(k) + 0.5).numpy() / k)), atol=1e-12)
    assert torch.allclose(thresholds, torch.tensor(stats.norm.ppf(torch.arange(1, k).numpy() / k)), atol=1e-12)
    # qnnrun's quantizer of a standard normal keeps the levels and switches from one to the next at the thresholds
    zero, one = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    assert torch.allclose(Q.kquantile_quantize(levels, bits, zero, one), levels, atol=1e-12)
    assert torch.allclose(Q.kquantile_quantize(thresholds - 1e-9, bits, zero, one), levels[:-1], atol=1e-12)
    assert torch.allclose(Q.kquantile_quantize(thresholds + 1e-9, bits, zero, one), levels[1:], atol=1e-12)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kquantile_quantize_maps_each_bin_to_its_median(bits: int) -> None:
    torch.manual_seed(3)
    x = torch.randn(4000, dtype=torch.float64) * 0.3 + 0.1
    mean, std = Q.gaussian_fit(x)
    out = Q.kquantile_quantize(x, bits, mean, std)
    k = 2**bits
    z = ((x - mean) / std).numpy()
    bins = torch.tensor(stats.norm.cdf(z) * k).floor().clamp(0, k - 1).long()
    expected = mean + std * torch.tensor(stats.norm.ppf((bins.numpy() + 0.5) / k))
    assert torch.allclose(out, expected, atol=1e-9)
    assert len(torch.unique(out)) == k
    # equiprobable bins: each level holds about 1/k of a normal sample
    assert (torch.bincount(bins, minlength=k).double() / len(x) - 1 / k).abs().max() < 0.03


def test_kquantile_quantizer_gradient_is_straight_through_and_fit_is_per_tensor() -> None:
    weight = torch.randn(8, 5, requires_grad=True)
    (KQuantileQuantizer(2)(weight) * 2).sum().backward()
    assert torch.equal(weight.grad, torch.full_like(weight, 2.0))
    mean, std = Q.gaussian_fit(weight)
    assert mean.item() == pytest.approx(weight.mean().item()) and std.item() == pytest.approx(weight.std().item())


@pytest.mark.parametrize("bits", [2, 4])
def test_uniq_noise_stays_within_half_a_bin_and_inside_the_levels(bits: int) -> None:
    k = 2**bits
    torch.manual_seed(4)
    quantizer = KQuantileQuantizer(bits).train()
    x = torch.randn(20000, dtype=torch.float64, requires_grad=True)
    noisy = quantizer.perturb(x)
    mean, std = Q.gaussian_fit(x)
    u = torch.special.ndtr((x - mean) / std).detach()
    u_noisy = torch.special.ndtr((noisy - mean) / std).detach()
    assert ((u_noisy - u).abs() <= 0.5 / k + 1e-9).all()
    levels, _ = kquantile_levels(bits)
    low, high = mean + std * levels[0], mean + std * levels[-1]
    assert (noisy >= low - 1e-9).all() and (noisy <= high + 1e-9).all()
    # the noise spreads over the whole half bin (not degenerate), centred on u where unclamped
    inside = (u > 1 / k) & (u < 1 - 1 / k)
    shift = (u_noisy - u)[inside]
    assert shift.abs().max() > 0.45 / k and abs(shift.mean().item()) < 0.01 / k
    noisy.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # identity gradient (test below)
    quantizer.eval()  # evaluation uses the real quantized weights
    assert torch.equal(quantizer.perturb(x), quantizer(x))


def test_uniq_noisy_weight_passes_the_upstream_gradient_unchanged() -> None:
    """UNIQ's code (UNIQ/quantize.py add_noise / restore_weights, hooked around each forward pass by
    UNIQNet's save_state / restore_state) writes the noisy copy into the weight's .data and restores the
    float weight afterwards: the float weight receives the gradient of the noisy weight as it is."""
    torch.manual_seed(5)
    quantizer = KQuantileQuantizer(2).train()
    x = (torch.randn(64, 32) * 3).requires_grad_()  # wide: many entries where the clamp is active
    upstream = torch.randn(64, 32)
    noisy = quantizer.perturb(x)
    assert not torch.equal(noisy, x)
    noisy.backward(upstream)
    assert torch.equal(x.grad, upstream)
    # In a layer in the NOISY state: the float weight's gradient is the noisy weight's, exactly.
    layer = QuantLinear.from_float(torch.nn.Linear(32, 16), KQuantileQuantizer(2), None).train()
    layer.set_channel_state(ChannelState.NOISY)
    inputs, grad_out = torch.randn(8, 32), torch.randn(8, 16)
    torch.manual_seed(6)
    layer(inputs).backward(grad_out)
    torch.manual_seed(6)  # the same noise again, now on a leaf
    noisy_weight = layer.weight_quant.perturb(layer.weight.detach()).requires_grad_()
    torch.nn.functional.linear(inputs, noisy_weight, layer.bias.detach()).backward(grad_out)
    assert torch.equal(layer.weight.grad, noisy_weight.grad)


def test_uniq_noise_grad_through_differentiates_the_noise_formula() -> None:
    torch.manual_seed(5)
    x = (torch.randn(4000, dtype=torch.float64) * 3).requires_grad_()
    through = KQuantileQuantizer(2, noise_grad="through").train()
    torch.manual_seed(7)
    through.perturb(x).sum().backward()
    mean, std = Q.gaussian_fit(x)
    torch.manual_seed(7)
    noise = (torch.rand_like(x) * 2 - 1) * (0.5 / 4)
    u = torch.special.ndtr((x - mean) / std).detach() + noise
    clamped = (u < 1 / 8) | (u > 7 / 8)
    assert clamped.any() and (x.grad[clamped] == 0).all() and (x.grad[~clamped] > 0).all()
    assert Uniq(compose_config(["method=uniq", "method.noise_grad=through"])).weight_quantizer(
        torch.nn.Linear(2, 2), 2).noise_grad == "through"
    assert Uniq(compose_config(["method=uniq"])).weight_quantizer(torch.nn.Linear(2, 2), 2).noise_grad == "identity"
    with pytest.raises(QnnrunError, match="method.noise_grad"):
        Uniq(compose_config(["method=uniq", "method.noise_grad=phi"]))


# ---- UNIQ stages -------------------------------------------------------------------------------


def test_split_blocks_is_contiguous_and_near_equal() -> None:
    assert [list(r) for r in split_blocks(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_uniq_stage_transitions_freeze_the_right_parameters() -> None:
    model, method, images = _digits_model(["method=uniq", "bits.w=2", "bits.a=8", "model=lenet5",
                                           "method.stages=3", "method.stage_epochs=[1,1,1]", "trainer.epochs=3"])
    assert isinstance(method, Uniq)
    blocks = method.blocks
    assert [len(b) for b in blocks] == [2, 2, 1] and all(isinstance(b[0].weight_quant, KQuantileQuantizer)
                                                          for b in blocks)
    method.plan(3, 10)
    method.prepare(model, [images])
    assert all(layer.input_quant.observed for block in blocks for layer in block)  # calibrated while float
    method.on_epoch_start(model, 0, 3)
    assert [b[0].present_states() for b in blocks] == [{ChannelState.NOISY}, {ChannelState.FLOAT},
                                                       {ChannelState.FLOAT}]
    assert [b[0].input_quant.enabled for b in blocks] == [True, False, False]
    assert not fully_quantized(model)  # later blocks float: what an evaluation now measures
    method.on_epoch_start(model, 1, 3)
    assert [b[0].present_states() for b in blocks] == [{ChannelState.FROZEN}, {ChannelState.NOISY},
                                                       {ChannelState.FLOAT}]
    assert [b[-1].input_quant.enabled for b in blocks] == [True, True, False]
    frozen = blocks[0][0]
    assert torch.equal(frozen.frozen_weight, frozen.weight_quant(frozen.weight))
    before = [layer.effective_weight().detach().clone() for layer in blocks[0]]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    model.train()
    for step in range(2):
        optimizer.zero_grad()
        model(images).logsumexp(1).sum().backward()
        if step == 0:
            assert all(layer.weight.grad is None for layer in blocks[0])  # frozen: no gradient
            assert all(layer.weight.grad.abs().sum() > 0 for block in blocks[1:] for layer in block)
            frozen_weights = {id(layer.weight) for layer in blocks[0]}
            others = [p for p in model.parameters() if id(p) not in frozen_weights]
            assert all(p.grad is not None for p in others)  # BatchNorm, biases and later blocks train
        optimizer.step()
    assert all(torch.equal(layer.effective_weight(), b) for layer, b in zip(blocks[0], before, strict=True))
    method.on_epoch_start(model, 2, 3)  # re-entering keeps the captured weights
    assert all(torch.equal(layer.effective_weight(), b) for layer, b in zip(blocks[0], before, strict=True))
    assert [b[0].present_states() for b in blocks] == [{ChannelState.FROZEN}, {ChannelState.FROZEN},
                                                       {ChannelState.NOISY}]
    assert all(layer.input_quant.enabled for block in blocks for layer in block)
    assert fully_quantized(model)  # the last stage's noisy block evaluates quantized


@pytest.mark.parametrize("freeze_bias", [True, False])
def test_uniq_frozen_blocks_freeze_their_biases_as_the_reference(freeze_bias: bool) -> None:
    """UNIQ's UNIQNet.switch_stage sets requires_grad=False on every parameter of a frozen block's layers
    (weight and bias); method.freeze_bias=false keeps the biases training."""
    model, method, images = _digits_model(["method=uniq", "bits.w=2", "bits.a=8", "model=lenet5",
                                           "model.batch_norm=false", "method.stages=3",
                                           f"method.freeze_bias={str(freeze_bias).lower()}"])
    blocks = method.blocks
    assert all(layer.bias is not None for block in blocks for layer in block)
    method.plan(3, 10)
    method.prepare(model, [images])
    method.on_epoch_start(model, 1, 3)  # block 0 frozen, block 1 noisy, block 2 float
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    before = [layer.bias.detach().clone() for layer in blocks[0]]
    model.train()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        model(images).logsumexp(1).sum().backward()
        optimizer.step()
    frozen_biases = [layer.bias for layer in blocks[0]]
    if freeze_bias:
        assert all(b.grad is None for b in frozen_biases)
        assert all(torch.equal(b, old) for b, old in zip(frozen_biases, before, strict=True))
    else:
        assert all(b.grad is not None for b in frozen_biases)
        assert not all(torch.equal(b, old) for b, old in zip(frozen_biases, before, strict=True))
    assert all(layer.bias.grad is not None for block in blocks[1:] for layer in block)  # later blocks train


def test_uniq_and_sq_at_32_bits_quantize_nothing() -> None:
    for method in ("uniq", "sq"):
        model, method_obj, images = _digits_model([f"method={method}", "bits=32"])
        method_obj.plan(3, 1)
        method_obj.on_epoch_start(model, 0, 3)
        method_obj.before_step(model, 0)
        assert not quant_layers(model) and model(images).shape == (16, 10)


def test_uniq_rejects_more_stages_than_layers() -> None:
    with pytest.raises(QnnrunError, match="method.stages=9"):
        _digits_model(["method=uniq", "method.stages=9"])
    with pytest.raises(QnnrunError, match="method.stages"):
        Uniq(compose_config(["method=uniq", "method.stages=0"]))


# ---- real trainings on digits ------------------------------------------------------------------


def test_sq_twn_learns_on_digits(tmp_path: Path) -> None:
    cfg = compose_config(["method=sq", "bits.w=2", "bits.a=32", "trainer.epochs=4"], data_dir=tmp_path / "data")
    summary = train(cfg, tmp_path / "sq")
    assert summary["test_acc"] >= 90.0
    history = load_checkpoint(tmp_path / "sq" / "last.ckpt")["history"]
    assert [h["quant/sq_ratio"] for h in history] == [0.5, 0.75, 0.875, 1.0]
    assert all(0 < h["quant/quant_error"] < 1 for h in history)


@pytest.mark.slow
def test_sq_resume_after_interruption_matches_uninterrupted_run(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["method=sq", "bits.w=2", "bits.a=32", "trainer.epochs=4", "trainer.deterministic=true"]
    straight, resumed, _ = train_interrupted_then_resumed(tmp_path, args, StochasticQuantization, 2, monkeypatch)
    for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
        assert resumed[key] == straight[key], key


def test_uniq_w2a8_learns_on_digits(tmp_path: Path) -> None:
    cfg = compose_config(["method=uniq", "bits.w=2", "bits.a=8", "trainer.epochs=3"], data_dir=tmp_path / "data")
    summary = train(cfg, tmp_path / "uniq")
    assert summary["test_acc"] >= 90.0 and (summary["bits_w"], summary["bits_a"]) == (2, 8)
    # Only the last stage evaluates the whole quantized network: the best is from there.
    history = load_checkpoint(tmp_path / "uniq" / "last.ckpt")["history"]
    assert [h["quantized"] for h in history] == [False, False, True]
    assert (summary["best_epoch"], summary["best_test_acc"]) == (3, summary["test_acc"])
    # The last stage's noisy block evaluates quantized: the saved run reproduces its test accuracy.
    eval_cfg = compose_config([f"checkpoint={tmp_path / 'uniq'}"], config_name="eval", data_dir=tmp_path / "data")
    line = evaluate_checkpoint(eval_cfg.checkpoint, eval_cfg.get("dataset"), eval_cfg.paths, eval_cfg.device)
    assert f"top-1 {summary['test_acc']:.2f}%" in line
