"""Neuron-by-neuron quantization and its baselines: MMSE affine quantizer, BatchNorm folding, the
progressive schedule of ``lbl`` / ``fbf`` / ``nbn``, and short real trainings on digits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config, train_interrupted_then_resumed
from torch import nn

from qnnrun.build import build_quantized_model, load_weights
from qnnrun.checkpoint import load_checkpoint
from qnnrun.data import dataset_info
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate_checkpoint, load_saved_run
from qnnrun.methods.progressive import NeuronByNeuron, ProgressiveQuantization
from qnnrun.methods.ste import DirectSTE
from qnnrun.models import build_model
from qnnrun.quant import calibrate as C
from qnnrun.quant.fold import FoldedBatchNorm, batchnorm_pairs, fold_batchnorm
from qnnrun.quant.layers import ChannelState, fully_quantized, quant_layers
from qnnrun.quant.quantizers import AffineQuantizer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---- MMSE affine quantizer ----------------------------------------------------------------------
def _brute_force_error(x: torch.Tensor, bits: int, scales: int = 150) -> float:
    """Smallest squared error over a grid of scales and every integer zero point."""
    qmax = 2**bits - 1
    span = float(x.max().clamp_min(0) - x.min().clamp_max(0))
    best = float("inf")
    for scale in torch.linspace(span / qmax / 20, span / qmax * 1.05, scales):
        for zero_point in range(qmax + 1):
            error = (C.affine_quantize(x, scale, torch.tensor(float(zero_point)), bits) - x).square().sum()
            best = min(best, float(error))
    return best


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_mmse_weight_params_match_brute_force(bits: int, shift: float) -> None:
    x = torch.randn(200) + shift
    scale, zero_point = C.mmse_tensor_params(x, bits)
    ours = float((C.affine_quantize(x, scale, zero_point, bits) - x).square().sum())
    assert ours <= _brute_force_error(x, bits) * 1.01
    assert zero_point == torch.round(zero_point) and 0 <= zero_point <= 2**bits - 1
    assert C.affine_quantize(torch.zeros(1), scale, zero_point, bits) == 0  # 0 is a level


def test_mmse_per_channel_is_per_tensor_row_by_row() -> None:
    w = torch.randn(5, 3, 2, 2) * torch.tensor([0.1, 1.0, 3.0, 0.5, 2.0]).view(-1, 1, 1, 1)
    scale, zero_point = C.mmse_tensor_params(w, 3, per_channel=True)
    assert scale.shape == zero_point.shape == (5, 1, 1, 1)
    for row in range(5):
        row_scale, row_zero = C.mmse_tensor_params(w[row], 3)
        assert torch.allclose(scale[row].squeeze(), row_scale) and zero_point[row].squeeze() == row_zero


def test_histogram_keeps_every_value_and_regrows() -> None:
    first, second = torch.randn(1000), torch.randn(1000) * 3
    counts, lo, hi = C.histogram_update(None, 0.0, 0.0, first)
    assert lo == float(first.min()) and hi == float(first.max()) and counts.sum() == 1000
    counts, lo, hi = C.histogram_update(counts, lo, hi, second)
    assert lo == float(torch.cat([first, second]).min()) and hi == float(torch.cat([first, second]).max())
    assert counts.sum() == 2000 and counts.numel() == C.HISTOGRAM_BINS


def test_histogram_mse_is_exact_on_bin_centres() -> None:
    # Values placed on bin centres are represented exactly by the histogram.
    bins, lo, hi = 16, -1.0, 3.0
    width = (hi - lo) / bins
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * width
    x = centres.repeat_interleave(torch.arange(1, bins + 1))
    counts, got_lo, got_hi = C.histogram_update(None, lo, hi, torch.cat([x, torch.tensor([lo, hi])]), bins)
    counts[0] -= 1  # take the two range-setting values back out again
    counts[-1] -= 1
    clip_lo, clip_hi = torch.tensor(-0.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    scale, zero_point = C.affine_params(clip_lo, clip_hi, 2)
    direct = (C.affine_quantize(x, scale, zero_point, 2) - x).square().sum()
    assert (got_lo, got_hi) == (lo, hi)
    assert torch.allclose(C.histogram_mse(counts, lo, hi, clip_lo, clip_hi, 2), direct)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("relu", [True, False])
def test_ternary_search_matches_brute_force_on_histogram(bits: int, relu: bool) -> None:
    x = torch.randn(20000)
    x = x.relu() if relu else x
    counts, lo, hi = C.histogram_update(None, 0.0, 0.0, x)
    scale, zero_point = C.mmse_histogram_params(counts, lo, hi, bits)
    qmax = 2**bits - 1
    clip_lo, clip_hi = -zero_point.double() * scale.double(), (qmax - zero_point.double()) * scale.double()
    ours = float(C.histogram_mse(counts, lo, hi, clip_lo, clip_hi, bits))
    low, high = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    brute = min(float(C.histogram_mse(counts, lo, hi, a * low, a * high, bits))
                for a in torch.linspace(0.001, 1, 1000).tolist())
    assert ours <= brute * 1.01
    if relu:
        assert zero_point == 0  # unsigned data: the grid starts at 0


def test_affine_quantizer_calibrates_from_histogram_and_fits_weights() -> None:
    quantizer = AffineQuantizer(3, source="histogram")
    batches = [torch.randn(64, 8).relu() * 4, torch.randn(64, 8).relu(), torch.randn(64, 8).relu()]
    batches[0][0, 0] = 20.0  # the widest range comes first: no re-binning, exact counts
    quantizer.calibrating = True
    for batch in batches:
        assert torch.equal(quantizer(batch), batch)  # calibration passes activations through
    quantizer.calibrating = False
    expected = C.mmse_histogram_params(*C.histogram_update(None, 0.0, 0.0, torch.cat(batches)), 3)
    assert quantizer.fitted and torch.equal(quantizer.scale, expected[0]) and quantizer.zero_point == expected[1]
    out = quantizer(batches[1])
    codes = out / quantizer.scale + quantizer.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.max() <= 7

    weights = AffineQuantizer(4, source="tensor", channels=6)
    w = torch.randn(6, 3, 3, 3)
    weights.fit(w)
    restored = AffineQuantizer(4, source="tensor", channels=6)
    restored.load_state_dict(weights.state_dict())
    assert restored.fitted and torch.equal(restored(w), weights(w))
    with pytest.raises(ValueError, match="bits"):
        AffineQuantizer(1)


# ---- BatchNorm folding --------------------------------------------------------------------------
def _randomize_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.2, 3)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("name,size,channels", [("nbn_cnn", 32, 3), ("lenet5", 28, 1), ("mlp", 8, 1),
                                                 ("resnet20", 32, 3)])
def test_folding_is_exact_in_eval_mode(name: str, size: int, channels: int) -> None:
    model = build_model({"name": name}, in_channels=channels, num_classes=10, image_size=size).eval()
    _randomize_batchnorm(model)
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        before = model(x)
    pairs = batchnorm_pairs(model, x[:2])
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(pairs) == len(norms)  # every BatchNorm of these models follows a conv/linear
    fold_batchnorm(model, pairs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    # The folded state dict loads into an unfolded model and evaluates the same there.
    fresh = build_model({"name": name}, in_channels=channels, num_classes=10, image_size=size).eval()
    batchnorm_pairs(fresh, x[:2])
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x), after, atol=1e-5)


@pytest.mark.parametrize("name,size,channels", [("mlp", 8, 1), ("resnet20", 32, 3)])
def test_a_folded_checkpoint_loads_into_a_fresh_float_model_as_the_folded_network(name: str, size: int,
                                                                                   channels: int) -> None:
    """The weights of an nbn/fbf/lbl (or ``quant.fold_bn``) run keep their folded shifts when they
    start another model (``init_from``, ``qnnrun sensitivity``): the fresh model gets the biases and
    the identities, in training mode too; a checkpoint with biases before live BatchNorms keeps them."""
    x = torch.randn(4, channels, size, size)
    for fold in (True, False):
        trained = build_model({"name": name}, in_channels=channels, num_classes=10, image_size=size).eval()
        _randomize_batchnorm(trained)
        pairs = batchnorm_pairs(trained, x[:2])
        for layer, _ in pairs:
            trained.get_submodule(layer).bias.data.uniform_(-1, 1)
        if fold:
            fold_batchnorm(trained, pairs)
        fresh = build_model({"name": name}, in_channels=channels, num_classes=10, image_size=size)
        load_weights(fresh, trained.state_dict())
        folded = [m for m in fresh.modules() if isinstance(m, FoldedBatchNorm)]
        assert len(folded) == (len(pairs) if fold else 0)
        for mode in (False, True) if fold else (False,):
            trained.train(mode), fresh.train(mode)
            with torch.no_grad():
                assert torch.equal(fresh(x), trained(x)), (fold, mode)


# ---- the progressive schedule -------------------------------------------------------------------
def _method_and_model(*overrides: str) -> tuple[ProgressiveQuantization, nn.Module]:
    cfg = compose_config(["model=nbn_cnn", "bits=3", *overrides])
    model, method = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    calibration = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    method.set_calibration_source(lambda: iter(calibration))
    return method, model  # type: ignore[return-value]


def _train_steps(method: ProgressiveQuantization, model: nn.Module, steps: range, check=None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    model.train()
    for step in steps:
        method.before_step(model, step)
        if check is not None:
            check(step)
        images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, step)


def test_quantized_fraction_follows_the_schedule_exactly() -> None:
    # nbn_cnn on digits: quantizable layers (first/last float) are conv 32, conv 64 and linear 32 outputs,
    # 8 groups each (4, 8, 4 channels): 24 groups. Budget: 4 epochs of 12 steps, 1 float, 1 final,
    # so 24 progression steps, one group per step, from step 12 on.
    method, model = _method_and_model("method=nbn", "method.float_epochs=1", "method.final_epochs=1")
    method.plan(4, 12)
    assert [name for name, _ in method.layers] == ["features.4", "features.8", "classifier.1"]
    assert (method.start_step, method.steps_per_group, len(method.groups)) == (12, 1, 24)
    assert (method.lr_scale(11), method.lr_scale(12)) == (1.0, 0.1)  # float rate, then quant_lr_scale
    layers = dict(quant_layers(model))

    def check(step: int) -> None:
        done = min(24, max(0, step - 11))
        for index, name in enumerate(["features.4", "features.8", "classifier.1"]):
            assert layers[name].quantized_fraction() == min(8, max(0, done - 8 * index)) / 8, (step, name)
        assert method.scalars(model)["quantized_fraction"] == pytest.approx(
            sum(min(8, max(0, done - 8 * i)) / 8 * c for i, c in enumerate([32, 64, 32])) / 128)
        # Inputs are calibrated and quantized when the layer's first group is.
        assert [layers[n].input_quant.enabled for n in layers] == [done > 8 * i for i in range(3)]

    _train_steps(method, model, range(48), check)
    assert method.done == 24 and method.folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FoldedBatchNorm) for m in model.modules())


@pytest.mark.parametrize("after_quantize", ["freeze", "ste"])
def test_quantized_parts_freeze_or_keep_training(after_quantize: str) -> None:
    method, model = _method_and_model("method=nbn", f"method.after_quantize={after_quantize}",
                                      "method.float_epochs=0", "method.final_epochs=0", "method.steps_per_group=3")
    method.plan(2, 36)  # 24 groups of 3 steps: the first 9 steps quantize 3 groups of features.4
    _train_steps(method, model, range(9))
    layer = dict(quant_layers(model))["features.4"]
    quantized = layer.channel_state >= ChannelState.QUANT
    assert int(quantized.sum()) == 12
    before = layer.effective_weight().detach().clone()
    shadow = layer.weight.detach().clone()
    _train_steps(method, model, range(9, 12))  # the fourth group comes at step 9
    after = layer.effective_weight().detach()
    changed = (after[quantized] != before[quantized]).flatten(1).any(1)
    if after_quantize == "freeze":
        assert not changed.any()
    else:  # the float shadow of every quantized row trains, and some rows move to other levels
        assert (layer.weight.detach()[quantized] != shadow[quantized]).flatten(1).any(1).all()
        assert changed.any()


@pytest.mark.parametrize("name", ["nbn", "fbf", "lbl"])
def test_at_the_end_every_neuron_is_quantized_and_eval_is_the_fully_quantized_net(name: str) -> None:
    method, model = _method_and_model(f"method={name}", "method.float_epochs=1", "method.final_epochs=0")
    method.plan(3, 12)
    _train_steps(method, model, range(36))
    assert method.scalars(model)["quantized_fraction"] == 1.0
    reference = copy.deepcopy(model)
    for (_, layer), (_, direct) in zip(quant_layers(model), quant_layers(reference), strict=True):
        weight = layer.effective_weight().detach()
        assert torch.equal(layer.weight_quant(weight), weight)  # on the layer's one per-tensor grid
        assert layer.input_quant.enabled and layer.input_quant.fitted
        direct.weight.data.copy_(weight)
        direct.set_channel_state(ChannelState.QUANT)  # direct quantization of every channel at once
    x = torch.randn(32, 1, 8, 8)
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("act_schedule", ["layer", "start"])
def test_a_layer_whose_rule_keeps_its_weights_float_gets_its_input_quantized_when_the_progression_starts(
        act_schedule: str) -> None:
    method, model = _method_and_model("method=nbn", "quant.layer_bits={features.8: {w: 32, a: 4}}",
                                      f"method.act_schedule={act_schedule}", "method.float_epochs=1",
                                      "method.final_epochs=0")
    method.plan(3, 8)
    assert [name for name, _ in method.layers] == ["features.4", "classifier.1"]  # no group for features.8
    layer = dict(quant_layers(model))["features.8"]
    assert layer.weight_quant is None and layer.input_quant.bits == 4
    _train_steps(method, model, range(8))  # the float phase
    assert not layer.input_quant.enabled
    _train_steps(method, model, range(8, 9))  # the progression's first step
    assert layer.input_quant.enabled and layer.input_quant.fitted
    _train_steps(method, model, range(9, 24))
    assert fully_quantized(model)


def test_rules_that_keep_every_weight_float_are_refused_for_training() -> None:
    """Refused when the run plans its progression; built without training (qnnrun sensitivity measuring
    one layer's inputs alone) the model is fine."""
    method, _ = _method_and_model("method=lbl",
                                  "quant.layer_bits={features.*: {w: 32, a: 4}, classifier.*: {w: 32, a: 4}}")
    with pytest.raises(QnnrunError, match="no weights to quantize progressively"):
        method.plan(3, 8)


def test_lbl_groups_are_layers_and_fbf_groups_are_eighths() -> None:
    lbl, _ = _method_and_model("method=lbl")
    lbl.plan(6, 10)
    assert [(g.layer, g.size) for g in lbl.groups] == [("features.4", 32), ("features.8", 64), ("classifier.1", 32)]
    assert (lbl.start_step, lbl.steps_per_group) == (30, 10)  # half the budget float, the rest 3 layers
    fbf, _ = _method_and_model("method=fbf", "method.group_size=5")
    fbf.plan(6, 10)
    assert [g.size for g in fbf.groups if g.layer == "features.4"] == [5, 5, 5, 5, 5, 5, 2]


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(QnnrunError, match="method.after_quantize='sometimes'.*ste, freeze"):
        _method_and_model("method=nbn", "method.after_quantize=sometimes")
    with pytest.raises(QnnrunError, match="method.group_size=0"):
        _method_and_model("method=nbn", "method.group_size=0")
    with pytest.raises(QnnrunError, match=r"method.quant_lr_scale=2 .*\(0, 1\]"):
        _method_and_model("method=nbn", "method.quant_lr_scale=2")
    method, _ = _method_and_model("method=nbn")
    with pytest.raises(QnnrunError, match="fewer than the 24 groups"):
        method.plan(2, 10)
    method, _ = _method_and_model("method=nbn", "method.steps_per_group=50")
    with pytest.raises(QnnrunError, match="method.steps_per_group=50"):
        method.plan(10, 20)


# ---- real short trainings on digits -------------------------------------------------------------
def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    cfg = compose_config(list(overrides), data_dir=tmp_path / "data")
    return train(cfg, tmp_path / name)


@pytest.mark.parametrize("name", ["lbl", "fbf", "nbn"])
def test_progressive_methods_learn_on_digits(tmp_path: Path, name: str) -> None:
    summary = _train(tmp_path, name, f"method={name}", "model=lenet5", "bits=3", "trainer.epochs=6")
    assert summary["test_acc"] >= 85.0
    ckpt = load_checkpoint(tmp_path / name / "last.ckpt")
    fractions = [h["quant/quantized_fraction"] for h in ckpt["history"]]
    assert fractions[2] == 0.0 and fractions[-1] == 1.0  # float phase (3 epochs), then all quantized
    assert fractions == sorted(fractions)
    # The best is an evaluation of the whole quantized net, never one of the float phase or of a partly
    # quantized one, and best.ckpt holds it.
    quantized = [h["quantized"] for h in ckpt["history"]]
    assert quantized == [fraction == 1.0 for fraction in fractions]
    assert summary["best_test_acc"] == max(h["test_acc"] for h in ckpt["history"] if h["quantized"])
    assert ckpt["history"][summary["best_epoch"] - 1]["quantized"]
    assert fully_quantized(load_saved_run(tmp_path / name / "best.ckpt", torch.device("cpu")).model)
    # `qnnrun eval` rebuilds the model unfolded and with float input quantizers, then loads the checkpoint.
    cfg = compose_config([f"checkpoint={tmp_path / name}"], config_name="eval", data_dir=tmp_path / "data")
    assert f"top-1 {summary['test_acc']:.2f}%" in evaluate_checkpoint(cfg.checkpoint, None, cfg.paths, cfg.device)


@pytest.mark.parametrize("method", ["ste", "nbn"])
def test_a_run_started_from_a_folded_run_resumes_exactly_and_evaluates(tmp_path: Path, method: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """init_from=<an nbn run>: the model starts folded (biases, no BatchNorms) before its optimizer
    exists; a resume builds the same (the checkpoint names those BatchNorms) and `qnnrun eval` reads it."""
    train(compose_config(["method=nbn", "bits=2", "trainer.epochs=3"], data_dir=tmp_path / "data"), tmp_path / "nbn")
    args = [f"method={method}", "bits=4", f"init_from={tmp_path / 'nbn'}", "trainer.epochs=3",
            "trainer.deterministic=true"]
    cls = NeuronByNeuron if method == "nbn" else DirectSTE
    straight, resumed, stopped_at = train_interrupted_then_resumed(tmp_path, args, cls, 2, monkeypatch)
    assert stopped_at == 2
    for key in ("test_acc", "test_loss", "train_loss"):
        assert resumed[key] == straight[key], key
    assert load_checkpoint(tmp_path / "straight")["folded_at_build"] == ["features.2", "features.5"]
    cfg = compose_config([f"checkpoint={tmp_path / 'straight'}"], config_name="eval", data_dir=tmp_path / "data")
    assert f"top-1 {straight['test_acc']:.2f}%" in evaluate_checkpoint(cfg.checkpoint, None, cfg.paths, cfg.device)


def test_nbn_from_a_float_checkpoint(tmp_path: Path) -> None:
    _train(tmp_path, "float", "method=fp", "model=lenet5", "trainer.epochs=4")
    summary = _train(tmp_path, "nbn", "method=nbn", "model=lenet5", "bits=2", "trainer.epochs=2",
                     f"init_from={tmp_path / 'float' / 'last.ckpt'}")
    assert summary["test_acc"] >= 80.0
    history = load_checkpoint(tmp_path / "nbn" / "last.ckpt")["history"]
    assert history[0]["quant/quantized_fraction"] > 0  # no float phase


def test_ste_with_mmse_init_and_folding_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "ste", "method=ste", "model=lenet5", "bits=3", "quant.init=mmse",
                     "quant.fold_bn=true", "quant.per_channel=false", "trainer.epochs=5")
    assert summary["test_acc"] >= 85.0
    with pytest.raises(QnnrunError, match="bits.w=1 is not valid with quant.init=mmse"):
        _train(tmp_path, "bad", "quant.init=mmse", "bits=1", "trainer.epochs=1")


def test_resume_in_the_middle_of_the_progression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["method=nbn", "model=lenet5", "bits=3", "trainer.epochs=4", "trainer.deterministic=true"]
    straight, resumed, _ = train_interrupted_then_resumed(tmp_path, args, NeuronByNeuron, 3, monkeypatch)
    for key in ("test_acc", "test_loss", "train_loss"):
        assert resumed[key] == straight[key], key
