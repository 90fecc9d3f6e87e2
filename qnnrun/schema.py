"""The typed schemas of the config groups every run has (``trainer``, ``quant``, ``dataset``,
``optim``, ``sched``): each option's one default, and its type, which Hydra checks when it composes
a config (``trainer.epochs=abc`` fails there, one line via :func:`qnnrun.cli.check_overrides`).

They are stored in Hydra's ConfigStore under ``schema/``; ``conf/trainer/default.yaml`` extends
``schema/trainer``, ``conf/train.yaml`` places ``schema/quant`` at ``quant``, each
``conf/dataset/<name>.yaml`` extends its kind's schema with the data set's own facts, and each
``conf/optim`` and ``conf/sched`` option extends its own. ``model`` and ``method`` stay untyped YAML:
their options differ per choice and a preset may pick the method by interpolation. Ranges and choices
are checked in :mod:`qnnrun.config`, whose messages list the valid values.

A run's config is saved in its checkpoints; :func:`saved_config` reads one back with every option
this version has, so code reads options directly, never with a default of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ValidationError

from qnnrun.errors import QnnrunError


@dataclass
class DistillConf:
    """Knowledge distillation from a teacher net (usually the ``init_from`` float net)."""

    teacher: Optional[str] = None  # a qnnrun checkpoint (.ckpt or run folder); null: off
    weight: float = 1.0  # loss = task loss + weight * T^2 * KL(teacher || student), both softened by T
    temperature: float = 4.0  # T > 0


@dataclass
class TrainerConf:
    """The training loop."""

    epochs: int = 30  # 0: evaluate the starting point only (the quantized init_from net, calibrated)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    devices: int = 1  # N > 1: one run on N data-parallel processes (DDP; GPUs, or gloo on CPU); see README
    deterministic: bool = False  # true: deterministic algorithms (same config, seed and machine -> same metrics)
    progress: bool = True  # progress bar; false for plain log lines (clusters, CI)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    # eager: quantized layers save their float input and replay the input quantizer in backward
    recompute_quant: bool = False
    on_nan: str = "stop"  # stop (error naming the step, last good checkpoint kept) | skip_batch (no update, counted)
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    label_smoothing: float = 0.0
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    # N > 0: log the batch loss, lr and method scalars every N steps (TensorBoard run <run>/steps)
    log_every_steps: int = 0
    num_threads: int = 0  # CPU threads for torch, 0 = torch's default
    distill: DistillConf = field(default_factory=DistillConf)


@dataclass
class QuantConf:
    """Quantizer options shared by all methods; a method's config sets its own defaults over these."""

    first_layer: Any = "fp"  # fp | 8 | same: bits of the first layer (weights and input)
    last_layer: Any = "fp"  # fp | 8 | same
    image_input_bits: Any = 8  # the image input of the first layer: 8, or 32 to keep it float
    per_channel: bool = True  # weight ranges per output channel (false: per tensor)
    narrow_range: bool = False  # signed codes [-(2^(b-1)-1), 2^(b-1)-1] instead of [-2^(b-1), 2^(b-1)-1]
    estimator: str = "clipped"  # clipped (gradient zero outside the range) | ste (identity)
    ema_momentum: float = 0.01  # activation range: EMA weight of each new batch's max |x|
    calib_batches: int = 4  # batches that initialise the activation ranges before training
    # > 0: before each evaluation, BatchNorm statistics recomputed over N training batches of the network
    # as it evaluates (sq, aqe: 50; their training nets keep rows float / mix h(x) with x)
    bn_reestimate_batches: int = 0
    init: str = "maxabs"  # maxabs (symmetric, max |x|) | mmse (affine, scale + zero point minimising the squared error)
    fold_bn: bool = False  # fold BatchNorm into the preceding conv/linear before quantizing (true for nbn/fbf/lbl)
    # Per-layer bit widths (mixed precision): layer-name pattern (glob) -> bits, or {w: bits, a: bits};
    # the first matching pattern wins over bits and the first/last layer policy. `qnnrun bops` lists the
    # layer names. E.g. 'quant.layer_bits={conv1: 8, layer3.*: {w: 4, a: 4}}' (keys unquoted)
    layer_bits: Any = None


@dataclass
class DatasetConf:
    """An image data set read whole into memory, batches made on the device (``digits``). The data
    set's own facts (``???`` here) are in its ``conf/dataset/<name>.yaml``."""

    name: str = MISSING
    in_channels: int = MISSING  # what the model is built for: channels, square side in pixels, classes
    image_size: int = MISSING
    num_classes: int = MISSING
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = False  # training batches: random crop after zero padding (crop_padding), hflip
    crop_padding: int = 0  # pixels of zero padding before the random crop
    hflip: bool = False  # random horizontal flip
    mean: List[float] = MISSING  # per-channel statistics of the training split, in [0, 1] units
    std: List[float] = MISSING
    drop_last: bool = False  # leave out the last, smaller training batch


@dataclass
class DownloadedConf(DatasetConf):
    """A torchvision data set (``mnist``, ``fashion_mnist``, ``cifar100``)."""

    download: bool = False  # fetch it into paths.data_dir when it is not there


@dataclass
class Cifar10Conf(DownloadedConf):
    """CIFAR-10: torchvision's python format, or else a JPEG tree decoded once and cached."""

    # Unreadable (or wrong-sized) image files: false = an error naming the file; true = left out,
    # with a count in the log.
    skip_bad: bool = False


@dataclass
class ImageFolderConf:
    """Any ``<root>/{train,val}/<class>/*.jpg`` tree, streamed from disk by DataLoader workers."""

    name: str = "imagefolder"
    root: str = MISSING  # a relative root is taken under paths.data_dir
    train_split: str = "train"
    val_split: str = "val"
    in_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000  # the count of class folders once loaded; this value is used only before
    batch_size: int = 256
    eval_batch_size: int = 256
    num_workers: int = 8
    augment: bool = True  # RandomResizedCrop + horizontal flip; false: the evaluation resize + center crop
    mean: List[float] = MISSING
    std: List[float] = MISSING
    drop_last: bool = False
    skip_bad: bool = False  # as Cifar10Conf.skip_bad


@dataclass
class SgdConf:
    """SGD with (Nesterov) momentum; weight decay on conv/linear weights only (not BatchNorm, biases)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5.0e-4


@dataclass
class AdamConf:
    """Adam: L2 weight decay on conv/linear weights only."""

    name: str = "adam"
    lr: float = 1.0e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0


@dataclass
class AdamWConf(AdamConf):
    """AdamW: decoupled weight decay on conv/linear weights only."""

    name: str = "adamw"
    weight_decay: float = 0.01


@dataclass
class ShiftAdamaxConf(AdamConf):
    """Shift-based AdaMax (BinaryNet, Algorithm 4): AdaMax whose multiplications are power-of-two
    shifts; weight_decay is an L2 term added to the gradient of conv/linear weights only."""

    name: str = "shift_adamax"
    lr: float = 2.0e-3


@dataclass
class ConstantConf:
    """A constant learning rate after an optional linear warm-up."""

    name: str = "constant"
    warmup_epochs: float = 0.0  # the rate rises linearly to lr over this many epochs (fractions allowed), per step


@dataclass
class CosineConf(ConstantConf):
    """Linear warm-up, then cosine decay to min_lr_ratio * lr, updated every step."""

    name: str = "cosine"
    min_lr_ratio: float = 0.0


@dataclass
class ExpConf(ConstantConf):
    """Exponential decay once per epoch, as BinaryNet trains (lr_start -> lr_fin over the run): epoch e
    (0-based) runs at lr * final_lr_ratio^(e / epochs)."""

    name: str = "exp"
    final_lr_ratio: float = 1.0e-4


@dataclass
class StepConf(ConstantConf):
    """The learning rate multiplied by gamma at each milestone epoch."""

    name: str = "step"
    milestones: List[int] = field(default_factory=lambda: [30, 60, 80])
    gamma: float = 0.1


# The schemas by the config node they type, and of the groups whose options differ by choice, by
# the ``name`` their configs hold (the data set, optimizer or schedule).
SCHEMAS: dict[str, type] = {"trainer": TrainerConf, "quant": QuantConf}
NAMED_SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {"digits": DatasetConf, "mnist": DownloadedConf, "fashion_mnist": DownloadedConf,
                "cifar10": Cifar10Conf, "cifar100": DownloadedConf, "imagefolder": ImageFolderConf},
    "optim": {"sgd": SgdConf, "adam": AdamConf, "adamw": AdamWConf, "shift_adamax": ShiftAdamaxConf},
    "sched": {"constant": ConstantConf, "cosine": CosineConf, "exp": ExpConf, "step": StepConf},
}

# What a method option meant in a saved config written before the option existed: the behaviour
# of that version, which is not always today's default (nbn's quant_lr_scale is 0.1 now; runs saved
# before it trained at 1.0).
_LATENT = {"loss": "ce", "glorot_lr": True, "shift_bn": False, "output_bn": True, "grad_bits": 32, "bn_eps": None,
           "latent_init": "uniform"}
_PROGRESSIVE = {"group_size": None, "steps_per_group": None, "float_epochs": None, "final_epochs": None,
                "after_quantize": "ste", "order": "error", "act_schedule": "layer", "quant_lr_scale": 1.0}
ABSENT_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "lsq": {"learned_offset": False, "low_bit_weight_decay": True, "act_init": "lsq", "min_step_ratio": 1.0e-3},
    "pact": {"alpha_init": 10.0, "alpha_decay": 0.0},
    "dorefa": {"grad_bits": 32, "act_clip": 1.0, "clip_last_input": False},
    "bnn": _LATENT,
    "qnn": {**_LATENT, "act_quant": "linear"},
    "aqe": {**_LATENT, "alpha": 0.5, "alpha_end": None},
    "uniq": {"noise_grad": "identity", "freeze_bias": True},
    "sq": {"twn_centered": True, "stage_schedule": "restart"},
    "nbn": _PROGRESSIVE,
    "lbl": _PROGRESSIVE,
    "fbf": _PROGRESSIVE,
}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore as ``schema/<node>`` (idempotent)."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema)
    for group, schemas in NAMED_SCHEMAS.items():
        for schema in set(schemas.values()):
            store.store(group=f"schema/{group}", name=schema.__name__, node=schema)


def absent_method_options(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The options of its method that a saved config lacks, each with what it meant when the config
    was written (:data:`ABSENT_METHOD_OPTIONS`)."""
    method = saved.get("method") or {}
    return {key: value for key, value in ABSENT_METHOD_OPTIONS.get(str(method.get("name")), {}).items()
            if key not in method}


def saved_config(saved: Mapping[str, Any] | DictConfig) -> DictConfig:
    """A config saved by any version of qnnrun (a checkpoint's ``config``) with every option this
    version reads: the schemas' defaults and :func:`absent_method_options` fill the options it
    lacks; the values it has are kept as they are. Options this version no longer has are dropped.
    A value this version cannot hold is a QnnrunError naming it."""
    cfg = OmegaConf.create(OmegaConf.to_container(saved) if OmegaConf.is_config(saved) else dict(saved))
    with open_dict(cfg):
        try:
            for node, schema in SCHEMAS.items():
                if node in cfg:
                    cfg[node] = _onto(schema, cfg[node])
            for node, schemas in NAMED_SCHEMAS.items():
                values = cfg.get(node)
                if values is not None and str(values.get("name")) in schemas:
                    cfg[node] = _onto(schemas[str(values.name)], values)
        except ValidationError as error:
            shown = "null" if error.value is None else repr(error.value)
            raise QnnrunError(f"the saved config's {node}.{error.full_key}={shown} cannot be read by this version "
                              f"of qnnrun: {str(error.msg).splitlines()[0]}") from None
        if cfg.get("method") is not None:
            cfg.method.update(absent_method_options(cfg))
    return cfg


def _onto(schema: type, values: DictConfig) -> DictConfig:
    """``values`` merged onto ``schema``'s defaults, keys the schema lacks left out, untyped again
    (a saved config is edited later, e.g. by resume)."""
    names = {f.name for f in fields(schema)}
    known = {k: v for k, v in OmegaConf.to_container(values).items() if k in names}
    defaults = {f.name: f.default_factory() for f in fields(schema) if callable(f.default_factory)}  # type: ignore[misc]
    nested = {key: type(value) for key, value in defaults.items() if is_dataclass(value)}
    for key, kind in nested.items():
        if isinstance(known.get(key), dict):
            known[key] = OmegaConf.to_container(_onto(kind, OmegaConf.create(known[key])))
        elif key in known and known[key] is None:  # trainer.distill=null was "off" before the schema
            del known[key]
    merged = OmegaConf.merge(OmegaConf.structured(schema), known)
    return OmegaConf.create(OmegaConf.to_container(merged))
