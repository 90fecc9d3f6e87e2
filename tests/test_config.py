"""Every option of every config group composes, validates and builds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra_utils import compose_config
from omegaconf import DictConfig

from qnnrun.build import build_quantized_model, example_input
from qnnrun.cli import CONFIG_DIR
from qnnrun.config import (method_options, method_quant_defaults, override_text, unused_method_options,
                           validate_train, warn_unused_method_options)
from qnnrun.data import DataInfo, dataset_info
from qnnrun.methods import METHODS, build_method, ignored_quant_options, warn_ignored_settings
from qnnrun.methods.base import COMMON_QUANT_OPTIONS
from qnnrun.optim import build_optimizer, lr_factor

GROUPS = ("model", "dataset", "method", "bits", "optim", "sched", "trainer")
# Models too large to build for every option in the default suite are built once on small input.
IMAGE_DATASET_FOR = {"resnet18": "cifar10", "resnet34": "cifar10", "resnet50": "cifar10", "mobilenet_v2": "cifar10",
                     "vgg_small": "cifar10", "resnet20": "cifar10", "resnet32": "cifar10", "resnet56": "cifar10"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in _options(group)]


def test_every_group_has_options() -> None:
    assert all(_options(group) for group in GROUPS)
    assert {"fp", "ste"} <= set(_options("method"))
    assert set(_options("bits")) == {"1", "2", "3", "4", "5", "6", "7", "8", "32"}


def _build_and_run(cfg: DictConfig, info: DataInfo) -> torch.optim.Optimizer:
    """Build ``cfg``'s quantized model, run it on a [2, C, H, W] zero batch, return its optimizer.
    The forward runs without autograd: it checks shapes, and a full-width net's graph costs seconds."""
    model, method = build_quantized_model(cfg, info, torch.device("cpu"))
    with torch.no_grad():
        assert model(example_input(info, torch.device("cpu"))).shape == (2, info.num_classes)
    return build_optimizer(cfg.optim, method.param_groups(model, cfg.optim.weight_decay))


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_builds(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if group == "model" and option in IMAGE_DATASET_FOR:
        overrides.append(f"dataset={IMAGE_DATASET_FOR[option]}")
    if group == "dataset" and option == "imagefolder":
        overrides.append(f"dataset.root={tmp_path}")
    cfg = compose_config(overrides, data_dir=tmp_path)
    validate_train(cfg)
    info = dataset_info(cfg.dataset)
    if group == "dataset" and option != "digits":
        cfg.dataset.image_size = info.image_size  # build the default mlp on that input shape
    optimizer = _build_and_run(cfg, info)
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr
    # torch's optimizers run fused, over every parameter a method hands them (steps, clipping levels).
    assert all(g.get("fused", cfg.optim.name == "shift_adamax") for g in optimizer.param_groups)
    for params in optimizer.param_groups:
        for param in params["params"]:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    factors = [lr_factor(cfg.sched, step, 10, 5) for step in range(50)]
    assert all(0 <= f <= 1 for f in factors)


def test_bits_shorthand_sets_both_and_fields_set_apart(tmp_path: Path) -> None:
    cfg = compose_config(["bits=2"], data_dir=tmp_path)
    assert (cfg.bits.w, cfg.bits.a) == (2, 2)
    cfg = compose_config(["bits.w=1", "bits.a=2"], data_dir=tmp_path)
    assert (cfg.bits.w, cfg.bits.a) == (1, 2)


def test_cosine_schedule_shape(tmp_path: Path) -> None:
    cfg = compose_config(["sched=cosine", "sched.warmup_epochs=1"], data_dir=tmp_path)
    assert lr_factor(cfg.sched, 0, 10, 5) == pytest.approx(0.1)
    assert lr_factor(cfg.sched, 9, 10, 5) == pytest.approx(1.0)
    assert lr_factor(cfg.sched, 30, 10, 5) == pytest.approx(0.5)
    cfg = compose_config(["sched=step", "sched.milestones=[2,4]"], data_dir=tmp_path)
    assert [lr_factor(cfg.sched, e * 10, 10, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # BinaryNet's decay: once per epoch, 3e-3 -> 3e-7 over the run as lr * 1e-4^(epoch / epochs).
    cfg = compose_config(["sched=exp"], data_dir=tmp_path)
    assert [lr_factor(cfg.sched, s, 10, 4) for s in (0, 9, 10, 39)] == pytest.approx([1, 1, 0.1, 1e-3])


def _sweep_points(experiment: str, tmp_path: Path) -> list[list[str]]:
    """Override lists that reach every value of the preset's sweep axes: the first value of each
    axis, then each other value of one axis at a time (values split by Hydra's override parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose_config([f"experiment={experiment}", "hydra.mode=RUN"], data_dir=tmp_path, keep_hydra=True)
    params = cfg.hydra.sweeper.params or {}
    axes = [(o.key_or_group, list(o.sweep_string_iterator()))
            for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])]
    first = [f"{key}={values[0]}" for key, values in axes]
    return [first] + [[*first[:i], f"{key}={value}", *first[i + 1:]]
                      for i, (key, values) in enumerate(axes) for value in values[1:]]


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiment_preset_composes_and_builds_at_every_sweep_value(experiment: str, tmp_path: Path) -> None:
    """A preset is mostly run on a borrowed GPU: a bad key or value must fail here, not there."""
    points = _sweep_points(experiment, tmp_path)
    assert points[0], f"experiment={experiment} sweeps nothing"
    for point in points:
        cfg = compose_config([f"experiment={experiment}", *point], data_dir=tmp_path)
        validate_train(cfg)
        _build_and_run(cfg, dataset_info(cfg.dataset))
        # No stray method keys, except the AQE grid's BNN row, which runs on aqe's options.
        stray = unused_method_options(cfg)
        expected = ["alpha", "alpha_end"] if (experiment, cfg.method.name) == ("aqe_cifar10", "bnn") else []
        assert stray == expected, (point, stray)
        assert ignored_quant_options(cfg) == [], point


def test_experiment_method_files_name_an_experiment_and_a_method() -> None:
    """conf/experiment_method/<experiment>/<method>.yaml is optional in the defaults list, so a
    misspelt folder or file would be skipped without a word: each must name real options."""
    files = sorted((Path(CONFIG_DIR) / "experiment_method").glob("*/*.yaml"))
    assert files
    for path in files:
        assert path.parent.name in _options("experiment"), path
        assert path.stem in _options("method"), path


def test_experiment_method_settings_reach_that_method_only(tmp_path: Path) -> None:
    def act_init(*overrides: str) -> str | None:
        cfg = compose_config(list(overrides), data_dir=tmp_path)
        return cfg.method.get("act_init")

    assert act_init("experiment=baselines_cifar10", "method=lsq") == "mse"
    assert act_init("experiment=baselines_cifar10", "method=ste") is None  # no stray key in the other rows
    # the command line wins
    assert act_init("experiment=baselines_cifar10", "method=lsq", "method.act_init=lsq") == "lsq"
    assert act_init("method=lsq") == "lsq"  # the method's own default outside the preset
    assert act_init("experiment=smoke", "method=lsq") == "lsq"
    pact = compose_config(["experiment=baselines_cifar10", "method=pact"], data_dir=tmp_path).method
    assert pact.alpha_init == "mse" and "act_init" not in pact
    assert compose_config(["experiment=baselines_cifar10", "method=pact", "method.alpha_init=10"],
                          data_dir=tmp_path).method.alpha_init == 10
    assert compose_config(["method=pact"], data_dir=tmp_path).method.alpha_init == 10.0
    dorefa = compose_config(["experiment=baselines_cifar10", "method=dorefa"], data_dir=tmp_path)
    assert dorefa.method.act_clip == "mse" and dorefa.quant.init == "maxabs"
    assert compose_config(["method=dorefa"], data_dir=tmp_path).method.act_clip == 1.0
    ste = compose_config(["experiment=baselines_cifar10", "method=ste"], data_dir=tmp_path)
    assert ste.quant.init == "mmse" and "act_clip" not in ste.method
    assert compose_config(["experiment=baselines_cifar10", "method=ste", "quant.init=maxabs"],
                          data_dir=tmp_path).quant.init == "maxabs"
    assert compose_config(["method=ste"], data_dir=tmp_path).quant.init == "maxabs"
    for method in ("nbn", "lbl"):  # the NBN preset fine-tunes every method at optim.lr
        cfg = compose_config(["experiment=nbn_cifar10", f"method={method}"], data_dir=tmp_path)
        assert cfg.method.quant_lr_scale == 1.0
    for method in ("ste", "lbl", "nbn"):  # the paper's QNN module folds BatchNorm for every method it compares
        assert compose_config(["experiment=nbn_cifar10", f"method={method}"], data_dir=tmp_path).quant.fold_bn is True
    assert compose_config(["method=ste"], data_dir=tmp_path).quant.fold_bn is False


def test_every_method_has_an_options_file() -> None:
    assert set(_options("method")) == set(METHODS)
    assert method_options("fp") == []
    assert method_options("lsq") == ["act_init", "learned_offset", "low_bit_weight_decay", "min_step_ratio"]
    assert method_options("nosuch") is None


def test_a_method_key_the_method_has_no_option_for_is_named_in_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = logging.getLogger("test_config")

    def warnings(*overrides: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="test_config"):
            warn_unused_method_options(compose_config(list(overrides), data_dir=tmp_path), log)
        return [record.getMessage() for record in caplog.records]

    # The float reference of a BinaryNet preset keeps the preset's loss, which fp does not read.
    assert warnings("experiment=bnn_cifar10", "method=fp") == [
        "method=fp has no option method.loss=squared_hinge, ignored (its options: none)"]
    assert warnings("+method.act_int=mse", "method=lsq") == [
        "method=lsq has no option method.act_int=mse, ignored "
        "(its options: act_init, learned_offset, low_bit_weight_decay, min_step_ratio)"]
    assert warnings("experiment=bnn_cifar10") == []
    assert warnings("method=lsq", "method.act_init=mse") == []


def _warnings(call, caplog: pytest.LogCaptureFixture, cfg: DictConfig) -> list[str]:
    import logging

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test_config"):
        call(cfg, logging.getLogger("test_config"))
    return [record.getMessage() for record in caplog.records]


def test_ignored_bits_and_quant_options_are_named_in_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def warnings(*overrides: str) -> list[str]:
        return _warnings(warn_ignored_settings, caplog, compose_config(list(overrides), data_dir=tmp_path))

    assert warnings("method=lsq", "quant.fold_bn=true", "quant.estimator=ste") == [
        "method=lsq does not read quant.estimator=ste, quant.fold_bn=true, ignored (the quant options of its own: "
        "per_channel)"]
    assert warnings("method=pact", "quant.per_channel=false") == [
        "method=pact does not read quant.per_channel=false, ignored (the quant options of its own: none)"]
    # Read by the method, or shared by every method, or at the method's own default: no warning.
    assert warnings("method=ste", "quant.fold_bn=true", "quant.init=mmse") == []
    assert warnings("method=lsq", "quant.per_channel=true", "quant.first_layer=fp", "quant.calib_batches=2") == []
    assert warnings("method=sq", "quant.estimator=ste", "quant.per_channel=true") == []  # sq.yaml's estimator
    assert warnings("method=bnn", "bits=2") == [
        "method=bnn is binary: bits.w=2 bits.a=2 ignored, running W1/A1 (method=qnn quantizes to k bits)"]
    assert warnings("method=bnn", "bits=1") == []
    # Once per run: building the method (a sweep job builds it twice: its folder's name, then the
    # model) warns of nothing.
    import logging

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="qnnrun"):
        build_method(compose_config(["method=bnn", "bits=2"], data_dir=tmp_path))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# A value other than each default for every quant option a method may not read.
OTHER_VALUE = {"per_channel": lambda v: not v, "narrow_range": lambda v: not v, "fold_bn": lambda v: not v,
               "estimator": lambda v: "ste" if v == "clipped" else "clipped", "ema_momentum": lambda v: 0.5,
               "init": lambda v: "mmse" if v == "maxabs" else "maxabs"}


def _two_steps(cfg: DictConfig) -> list[Any]:
    """Logits, then the state (tensors, quantizers' extra states) of ``cfg``'s model (the default
    digits MLP) built by its method, calibrated on one batch and trained two SGD steps on others
    through the engine's hooks (seeded: equal for equal configs)."""
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model, method = build_quantized_model(cfg, info, torch.device("cpu"))
    batches = [torch.randn(16, info.in_channels, info.image_size, info.image_size) * 2 for _ in range(3)]
    labels = torch.randint(0, info.num_classes, (16,))
    method.plan(1, len(batches) - 1)
    method.prepare(model, [batches[0] * 0.05])  # ranges training inputs exceed: the estimators differ there
    optimizer = build_optimizer(cfg.optim, method.param_groups(model, cfg.optim.weight_decay))
    model.train()
    method.on_epoch_start(model, 0, 1)
    for step, images in enumerate(batches[1:]):  # the engine's hooks, in its order
        method.before_step(model, step)
        logits = model(images)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        method.after_optimizer_step(model, step)
    return [logits.detach(), *model.state_dict().values()]


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
                                    for x, y in zip(a, b))


def _with_quant(cfg: DictConfig, key: str) -> DictConfig:
    """``cfg`` with ``quant.<key>`` at another value than the method's default."""
    changed = copy.deepcopy(cfg)
    changed.quant[key] = OTHER_VALUE[key](method_quant_defaults(cfg.method.name)[key])
    return changed


@pytest.mark.parametrize("method", sorted(m for m in METHODS if set(OTHER_VALUE) - METHODS[m].quant_options))
def test_quant_options_a_method_does_not_read_change_nothing(method: str, tmp_path: Path) -> None:
    """What :func:`ignored_quant_options` warns about is true: a quant option neither shared by every
    method nor declared by this one (``Method.quant_options``) leaves two training steps as they were."""
    cfg = compose_config([f"method={method}", "model.widths=[32,32]"], data_dir=tmp_path)
    assert ignored_quant_options(cfg) == []  # the method's own config (conf/method/<name>.yaml) warns of nothing
    base = _two_steps(cfg)
    for key in sorted(set(OTHER_VALUE) - METHODS[method].quant_options):
        changed = _with_quant(cfg, key)
        assert ignored_quant_options(changed) == [f"quant.{key}={override_text(changed.quant[key])}"]
        assert _same(_two_steps(changed), base), (method, key)


def test_the_two_steps_see_a_quant_option_change(tmp_path: Path) -> None:
    """The comparison above can fail: ste reads every quant option, and each but narrow_range changes
    its two steps (its weights' max-abs ranges never reach the code a narrow range drops; its inputs
    are unsigned)."""
    cfg = compose_config(["method=ste", "model.widths=[32,32]"], data_dir=tmp_path)
    base = _two_steps(cfg)
    assert set(OTHER_VALUE) == METHODS["ste"].quant_options
    for key in sorted(set(OTHER_VALUE) - {"narrow_range"}):
        changed = _with_quant(cfg, key)
        assert ignored_quant_options(changed) == []
        assert not _same(_two_steps(changed), base), key
    assert not COMMON_QUANT_OPTIONS & set(OTHER_VALUE)
