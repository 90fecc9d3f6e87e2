"""Model registry: every model builds from its yaml, has the right shapes and parameter counts."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qnnrun.errors import QnnrunError
from qnnrun.models import DATA_KWARGS, MODELS, build_model, model_options

MODEL_CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
BATCH = 2

SMALL_INPUTS = [(1, 8, 10), (1, 28, 10), (3, 32, 10)]  # sklearn digits, MNIST, CIFAR-10
CIFAR_INPUTS = [(3, 32, 10), (3, 32, 100)]
INPUTS = {
    "mlp": SMALL_INPUTS,
    "lenet5": SMALL_INPUTS,
    "nbn_cnn": SMALL_INPUTS,
    **{
        name: CIFAR_INPUTS
        for name in (
            "vgg_small", "aqe_convnet", "resnet20", "resnet32", "resnet56",
            "resnet18", "resnet34", "resnet50", "mobilenet_v2",
        )
    },
}
SHAPE_CASES = [
    (name, *shape) for name, shapes in INPUTS.items() for shape in shapes
] + [("resnet18", 3, 224, 1000)]


def yaml_cfg(name: str) -> DictConfig:
    return OmegaConf.load(MODEL_CONF / f"{name}.yaml")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_has_a_yaml_and_shape_cases():
    assert sorted(p.stem for p in MODEL_CONF.glob("*.yaml")) == sorted(MODELS)
    assert sorted(INPUTS) == sorted(MODELS)


@pytest.mark.parametrize(("name", "in_channels", "image_size", "num_classes"), SHAPE_CASES)
def test_builds_from_yaml_and_gives_logits(name, in_channels, image_size, num_classes):
    model = build_model(
        yaml_cfg(name), in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
    with torch.no_grad():
        out = model(torch.randn(BATCH, in_channels, image_size, image_size))
    assert out.shape == (BATCH, num_classes)


def test_backward_reaches_every_parameter():
    model = build_model(yaml_cfg("lenet5"), in_channels=1, num_classes=10, image_size=28)
    loss = nn.functional.cross_entropy(model(torch.randn(BATCH, 1, 28, 28)), torch.tensor([3, 7]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("path", sorted(MODEL_CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_keys_are_the_builder_options_with_their_defaults(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    name = cfg.pop("name")
    assert name == path.stem
    defaults = model_options(name)
    assert sorted(cfg) == sorted(defaults)
    for key, value in cfg.items():
        default = defaults[key]
        assert value == (list(default) if isinstance(default, tuple) else default), key
    assert set(DATA_KWARGS) <= set(inspect.signature(MODELS[name]).parameters)


def test_resnet20_parameter_count():
    # 269,722 as in He et al. 2016 (0.27M): stem 432 + BN 32, stage 1 6 x (2,304 + 32),
    # stage 2 4,672 + 5 x 9,280, stage 3 18,560 + 5 x 36,992, FC 650; option A adds nothing.
    model = build_model(yaml_cfg("resnet20"), in_channels=3, num_classes=10, image_size=32)
    assert n_params(model) == 269_722


def test_resnet_cifar_shortcut_b_adds_projections():
    cfg = {"name": "resnet20", "shortcut": "B"}
    model = build_model(cfg, in_channels=3, num_classes=10, image_size=32)
    # Two projections: 16->32 (512 + BN 64) and 32->64 (2,048 + BN 128).
    assert n_params(model) == 269_722 + 576 + 2_176
    with torch.no_grad():
        assert model(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, 10)


def test_torchvision_resnet18_imagenet_parameter_count():
    cfg = {"name": "resnet18", "stem": "imagenet"}
    model = build_model(cfg, in_channels=3, num_classes=1000, image_size=224)
    assert n_params(model) == 11_689_512


def test_unknown_model_names_the_value_and_the_choices():
    with pytest.raises(QnnrunError) as info:
        build_model({"name": "resnet7"}, in_channels=3, num_classes=10, image_size=32)
    message = str(info.value)
    assert "'resnet7'" in message
    assert all(name in message for name in MODELS)


def test_unknown_option_names_the_model_the_key_and_the_choices():
    cfg = OmegaConf.create({"name": "mlp", "widths": [8], "depth": 3})
    with pytest.raises(QnnrunError) as info:
        build_model(cfg, in_channels=1, num_classes=10, image_size=8)
    message = str(info.value)
    assert "mlp" in message and "'depth'" in message
    assert all(key in message for key in ("widths", "batch_norm", "dropout", "input_dropout"))


@pytest.mark.parametrize(
    "cfg",
    [{"name": "resnet20", "shortcut": "C"}, {"name": "resnet18", "stem": "tiny"}],
)
def test_bad_option_values_are_user_errors(cfg):
    with pytest.raises(QnnrunError, match="'C'|'tiny'"):
        build_model(cfg, in_channels=3, num_classes=10, image_size=32)


def test_lenet5_on_8x8_digits_keeps_a_2x2_map():
    model = build_model(yaml_cfg("lenet5"), in_channels=1, num_classes=10, image_size=8)
    with torch.no_grad():
        features = model.features(torch.randn(BATCH, 1, 8, 8))
        assert features.shape == (BATCH, 16, 2, 2)
        assert model(torch.randn(BATCH, 1, 8, 8)).shape == (BATCH, 10)


def test_mlp_options_shape_the_layers():
    cfg = {"name": "mlp", "widths": [32, 16, 8], "batch_norm": False, "dropout": 0.5,
           "input_dropout": 0.2}
    model = build_model(cfg, in_channels=1, num_classes=10, image_size=8)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64, 32), (32, 16), (16, 8), (8, 10)
    ]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 4


def test_vgg_small_width_multiplier():
    cfg = {"name": "vgg_small", "width": 0.25, "fc_width": 64}
    model = build_model(cfg, in_channels=3, num_classes=10, image_size=32)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 32, 64, 64, 128, 128]
    with torch.no_grad():
        assert model(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, 10)


def _output_shape(module: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Size:
    shapes = []
    handle = module.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    return shapes[0]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet_cifar_stem_keeps_32x32(name):
    model = build_model(yaml_cfg(name), in_channels=3, num_classes=10, image_size=32)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, nn.Identity)
    assert _output_shape(model.maxpool, model, torch.randn(BATCH, 3, 32, 32)) == (
        BATCH, 64, 32, 32
    )


def test_auto_stem_is_imagenet_for_large_images():
    model = build_model(yaml_cfg("resnet18"), in_channels=3, num_classes=10, image_size=224)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize(("stem", "side"), [("cifar", 4), ("imagenet", 1)])
def test_mobilenet_v2_stems(stem, side):
    cfg = {"name": "mobilenet_v2", "width_mult": 0.5, "stem": stem}
    model = build_model(cfg, in_channels=3, num_classes=10, image_size=32)
    assert _output_shape(model.features, model, torch.randn(BATCH, 3, 32, 32))[2:] == (
        side, side
    )


@pytest.mark.parametrize(
    ("name", "stem", "image_size"),
    [("resnet18", "cifar", 32), ("resnet18", "imagenet", 64), ("mobilenet_v2", "cifar", 28),
     ("mobilenet_v2", "imagenet", 64)],
)
def test_torchvision_models_accept_grayscale(name, stem, image_size):
    model = build_model(
        {"name": name, "stem": stem}, in_channels=1, num_classes=10, image_size=image_size
    )
    with torch.no_grad():
        assert model(torch.randn(BATCH, 1, image_size, image_size)).shape == (BATCH, 10)
