"""Evaluation: loss and accuracy of a model over batches, BatchNorm re-estimation, saved runs rebuilt
for evaluation, and the ``eval`` / ``bops`` commands' reports."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.build import build_quantized_model, example_input, select_device
from qnnrun.checkpoint import load_checkpoint
from qnnrun.config import validate_quant
from qnnrun.data import DataBundle, DataInfo, build_data, dataset_info
from qnnrun.errors import QnnrunError
from qnnrun.methods import Method
from qnnrun.metrics.bops import LayerCost, format_table, layer_costs, totals
from qnnrun.schema import saved_config


@dataclass
class EvalResult:
    loss: float
    acc: float  # top-1, percent
    top5: float | None  # percent, only for more than 10 classes


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
             autocast: Any = nullcontext, channels_last: bool = False) -> EvalResult:
    """Mean cross-entropy, top-1 and (for > 10 classes) top-5 accuracy over ``batches``."""
    was_training = model.training
    model.eval()
    totals_: Tensor | None = None  # [loss sum, top-1 hits, top-5 hits], on the device: one sync at the end
    count = 0
    with torch.no_grad():
        for images, labels in batches:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, num_classes), dim=1).indices == labels[:, None]  # [B, k]
            batch = torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                 hits[:, 0].sum().double(), hits.any(1).sum().double()])
            totals_ = batch if totals_ is None else totals_ + batch
            count += labels.numel()
    model.train(was_training)
    if totals_ is None:
        raise QnnrunError("the evaluation set is empty")
    if dist.is_available() and dist.is_initialized():  # each rank evaluated its slice of every batch
        totals_ = torch.cat([totals_, torch.tensor([float(count)], device=totals_.device, dtype=torch.float64)])
        dist.all_reduce(totals_)
        count = int(totals_[3].item())
    loss_sum, correct, correct5 = totals_[:3].tolist()
    top5 = 100.0 * correct5 / count if num_classes > 10 else None
    return EvalResult(loss_sum / count, 100.0 * correct / count, top5)


def reestimate_batchnorm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], autocast: Any = nullcontext,
                         channels_last: bool = False) -> int:
    """Replace the running mean and variance of every BatchNorm of ``model`` by their plain average
    over ``batches`` ([B, ...] images; labels unused), computed on the network as it evaluates.

    Every other module stays in evaluation mode: SQ's rows all quantized, AQE's ``h`` alone, UNIQ's
    noisy block quantized, dropout off, activation ranges fixed. (``torch.optim.swa_utils.update_bn``
    puts the whole model in training mode, which would measure the training network instead and
    move the activation ranges.) Momenta and the training flag are restored; returns the number of
    BatchNorm layers re-estimated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    with torch.no_grad():
        for images, _ in batches:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                model(images)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.train(was_training)
    return len(norms)


@dataclass
class SavedRun:
    """A saved run rebuilt for evaluation: its config, data-set shape, model (eval mode), method, epoch."""

    config: DictConfig
    info: DataInfo
    model: nn.Module
    method: Method
    epoch: int


def load_saved_run(checkpoint: str | Path, device: torch.device) -> SavedRun:
    """Rebuild the (fake-quant) model of a checkpoint (a ``.ckpt`` file or a run folder) on ``device``,
    with its method state (:meth:`Method.restore_model`: a progressive run's folded BatchNorms)."""
    ckpt = load_checkpoint(checkpoint)
    config = saved_config(ckpt["config"])
    info = DataInfo(**ckpt["info"])
    model, method = build_quantized_model(config, info, device, like=ckpt["model"])
    model.load_state_dict(ckpt["model"])
    if ckpt.get("method"):
        method.load_state_dict(ckpt["method"])
        method.restore_model(model)
    return SavedRun(config, info, model.eval(), method, int(ckpt["epoch"]))


def evaluate_checkpoint(checkpoint: str, dataset: DictConfig | None, paths: DictConfig, device: str) -> str:
    """Evaluate a saved run on its own test set, or on ``dataset`` when given; returns a report line."""
    torch_device = select_device(device)
    run = load_saved_run(checkpoint, torch_device)
    data = saved_run_data(run, dataset, paths, torch_device)
    return eval_report_line(run, data, evaluate(run.model, data.test, run.info.num_classes))


def saved_run_paths(saved: DictConfig, paths: DictConfig) -> tuple[Path, Path]:
    """The folders (data, cache) a command reads a saved run's data set from. The data folder is
    ``paths.data_dir`` where the command line gives one (null otherwise), else the run's own
    (``saved.paths.data_dir``) where that folder exists here, else ``qnnrun train``'s default:
    ``$QNNRUN_DATA``, or ``./data``. The cache is ``paths.cache_dir`` where given, else the run's own
    with the run's data folder (where it exists here), else ``<data folder>/.qnnrun-cache``."""
    own = saved.get("paths") or {}
    own_dir = Path(str(own["data_dir"])).expanduser() if own.get("data_dir") is not None else None
    if paths.get("data_dir") is not None:
        data_dir = Path(str(paths.data_dir)).expanduser()
    elif own_dir is not None and own_dir.is_dir():
        data_dir = own_dir
    else:
        data_dir = Path(os.environ.get("QNNRUN_DATA", Path.cwd() / "data")).expanduser()
    if paths.get("cache_dir") is not None:
        return data_dir, Path(str(paths.cache_dir)).expanduser()
    own_cache = Path(str(own["cache_dir"])).expanduser() if own.get("cache_dir") is not None else None
    if data_dir == own_dir and own_cache is not None and own_cache.is_dir():
        return data_dir, own_cache
    return data_dir, data_dir / ".qnnrun-cache"


def saved_run_data(run: SavedRun, dataset: DictConfig | None, paths: DictConfig, device: torch.device) -> DataBundle:
    """The data to evaluate a saved run on: its own data set, or ``dataset`` when it fits the model,
    read from :func:`saved_run_paths`."""
    data_dir, cache_dir = saved_run_paths(run.config, paths)
    data = build_data(dataset if dataset is not None else run.config.dataset, data_dir=data_dir,
                      cache_dir=cache_dir, device=device, seed=run.config.seed)
    shape = (data.info.in_channels, data.info.image_size, data.info.num_classes)
    info = run.info
    if shape != (info.in_channels, info.image_size, info.num_classes):
        raise QnnrunError(f"data set '{data.info.name}' (channels, size, classes) = {shape} does not fit the "
                          f"checkpoint's model, trained on '{info.name}' = "
                          f"{(info.in_channels, info.image_size, info.num_classes)}")
    return data


def eval_report_line(run: SavedRun, data: DataBundle, result: EvalResult) -> str:
    """``<method> <model> W/A (epoch N) on <data set> test (N images): top-1 ...`` for ``qnnrun eval``."""
    top5 = f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""
    return (f"{run.config.method.name} {run.config.model.name} {run.method.bits_label} "
            f"(epoch {run.epoch}) on {data.info.name} test ({data.test.num_samples} images): "
            f"top-1 {result.acc:.2f}%{top5}  loss {result.loss:.4f}")


def config_costs(cfg: DictConfig) -> tuple[list[LayerCost], Method, DataInfo]:
    """The per-image layer costs of ``cfg``'s model as its method builds it on the CPU (from the data
    set's shape; no data is read), the method and that shape."""
    info, cpu = dataset_info(cfg.dataset), torch.device("cpu")
    model, method = build_quantized_model(cfg, info, cpu)
    return layer_costs(model, example_input(info, cpu, 1)), method, info


def bops_report(cfg: DictConfig) -> str:
    """The per-layer BOPs / size table of ``cfg``'s model, method and bits (no data is read)."""
    validate_quant(cfg)
    costs, method, info = config_costs(cfg)
    header = (f"{cfg.model.name} on {info.name} ({info.in_channels}x{info.image_size}x{info.image_size}, "
              f"{info.num_classes} classes), method={cfg.method.name} {method.bits_label}, "
              f"first/last layer {cfg.quant.first_layer}/{cfg.quant.last_layer}")
    return header + "\n" + format_table(costs, totals(costs))
