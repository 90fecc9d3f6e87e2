"""Training throughput of every method against float, side by side in one process.

For every model x method x bits it times the engine's own train step (``qnnrun.engine.train_step``:
the method's hooks, forward, loss, backward, optimizer) on random CIFAR-shaped batches held on the
device, eager and, with ``--compile``, through ``torch.compile``, and prints one Markdown table:
images/s, the ratio to the float fp32 eager step of the same model (always measured first), peak
GPU memory and its ratio to float's, the memory saved for backward, and the compile warm-up.
``--channels-last``, ``--bf16``, ``--recompute`` (``trainer.recompute_quant``) and ``--unfused``
(the optimizer's default form, for-loop on a CPU, which qnnrun replaced by the fused one) add those variants;
``--epoch`` also times whole epochs through the project's data loader (``TensorLoader``: uint8
images on the device, shuffled, cropped and flipped there; random CIFAR-sized data, so no files are
read) against the pure train step of the same configuration.
A Brevitas row per model and bits (``QuantConv2d`` / ``QuantReLU``, the same layer policy as
``method=ste``) is added when ``brevitas`` is importable (``pip install -e '.[bench]'``).

    python scripts/bench_throughput.py                                   # CPU-sized defaults
    python scripts/bench_throughput.py --device cuda --batch 512 --steps 100 --compile --channels-last --bf16
    python scripts/bench_throughput.py --methods fp ste lsq --bits 2 4 --epoch --json out.json

Timing: ``--warmup`` untimed steps first (compilation happens there; a compiled variant's warm-up
minus that many steady steps is reported as its compile time), then ``--steps`` steps timed with
CUDA events (wall clock on the CPU). ``--precompile N`` first compiles every compiled row in ``N``
processes at once, so that the timed rows compile from inductor's on-disk caches: many compiled
rows then fit a short GPU session. ``--rounds R`` holds all of a model's rows at once and times them
in ``R`` interleaved rounds, so that on a shared machine (a CPU beside training runs) a change of load
falls on every row alike. Methods with a schedule are timed where a real run spends its middle:
the hooks are told a run of ``--plan-epochs`` epochs of a CIFAR-sized epoch at this batch and the
timed steps sit at 70% of it (SQ: ratio 0.875, rows redrawn every step; UNIQ: the last block noisy,
the others frozen; NBN / FBF / LBL: mid-progression, groups still being quantized).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import date

import torch
import torch._dynamo
import torch._inductor.config
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.build import build_quantized_model, select_device
from qnnrun.cli import CONFIG_DIR, quote_numeric_groups
from qnnrun.data import TensorLoader, dataset_info
from qnnrun.engine import allow_recompiles, train_step
from qnnrun.errors import QnnrunError
from qnnrun.methods import build_method
from qnnrun.metrics.memory import KernelTraffic, SavedForBackward
from qnnrun.models import build_model
from qnnrun.optim import build_optimizer, method_lr_factor
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import set_recompute_input

METHODS = ["fp", "ste", "lsq", "dorefa", "pact", "sq", "uniq", "nbn", "fbf", "lbl", "bnn", "qnn", "aqe"]
CIFAR_TRAIN = 50000


@dataclass
class Variant:
    """How a step is run: compiled or eager, memory format, autocast precision."""

    compile: bool = False
    channels_last: bool = False
    bf16: bool = False
    recompute: bool = False  # trainer.recompute_quant (eager only: a compiled graph makes its own choice)
    unfused: bool = False  # torch's default optimizer form (for-loop on a CPU, foreach on CUDA), not the fused one

    def label(self) -> str:
        parts = ["compile" if self.compile else "eager"]
        if self.unfused:
            parts.append("unfused")
        if self.recompute:
            parts.append("recompute")
        if self.channels_last:
            parts.append("channels_last")
        if self.bf16:
            parts.append("bf16")
        return "+".join(parts)

    def autocast(self, device: torch.device) -> Callable[[], AbstractContextManager]:
        if not self.bf16:
            return nullcontext
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class Result:
    model: str
    method: str
    bits: str
    variant: str
    images_per_s: float
    peak_mib: float | None = None  # GPU only
    saved_mib: float | None = None  # what one training forward saves for backward
    kernels: int | None = None  # ATen kernels of one eager train step
    moved_mib: float | None = None  # bytes those kernels read and write
    compile_s: float | None = None  # compiled variants only
    cold_compile_s: float | None = None  # --precompile: the same warm-up with empty caches, in the pool
    graphs: int | None = None  # graphs dynamo compiled, warm-up and timed steps together
    epoch_images_per_s: float | None = None  # --epoch
    note: str = ""
    ratio: float = field(default=float("nan"))
    memory_ratio: float | None = None
    saved_ratio: float | None = None
    moved_ratio: float | None = None


class Timer:
    """Seconds between ``start()`` and ``stop()``: CUDA events on a GPU, else the wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.wall = time.perf_counter()

    def stop(self) -> float:
        if self.device.type == "cuda":
            self.end.record()
            torch.cuda.synchronize(self.device)
            return self.begin.elapsed_time(self.end) / 1000.0
        return time.perf_counter() - self.wall


def compose_run(model: str, method: str, bits: int, overrides: list[str]) -> DictConfig:
    """The ``train`` config of one run (CIFAR-10 shapes; nothing is read from disk)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=quote_numeric_groups(
            [f"model={model}", "dataset=cifar10", f"method={method}",
             *([] if method == "fp" else [f"bits={bits}"]), *overrides]))


def synthetic_batch(cfg: DictConfig, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A normalized-looking float batch [B, C, H, W] and labels [B], on ``device``."""
    info = dataset_info(cfg.dataset)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, info.in_channels, info.image_size, info.image_size, generator=generator)
    labels = torch.randint(0, info.num_classes, (batch,), generator=generator)
    return images.to(device), labels.to(device)


def synthetic_loader(cfg: DictConfig, samples: int, batch: int, device: torch.device) -> TensorLoader:
    """The training loader a CIFAR-10 run builds, over ``samples`` random uint8 images."""
    info, data = dataset_info(cfg.dataset), cfg.dataset
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (samples, info.in_channels, info.image_size, info.image_size),
                           dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, info.num_classes, (samples,), generator=generator)
    return TensorLoader(images, labels, batch_size=batch, mean=list(data.mean), std=list(data.std), device=device,
                        seed=0, shuffle=True, drop_last=bool(data.drop_last), augment=bool(data.augment),
                        crop_padding=int(data.crop_padding), hflip=bool(data.hflip))


class Trainer:
    """One configured run, ready to step: the model, its method (scheduled to 70% of a notional
    run), optimizer, scheduler and loss, built the way ``qnnrun.engine.train`` builds them."""

    def __init__(self, cfg: DictConfig, variant: Variant, device: torch.device, batch: int,
                 plan_epochs: int, compile_mode: str | None = None) -> None:
        info = dataset_info(cfg.dataset)
        torch.manual_seed(0)
        self.model, self.method = build_quantized_model(cfg, info, device)
        set_recompute_input(self.model, variant.recompute)
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cfg, self.variant, self.device = cfg, variant, device
        self.images, self.labels = synthetic_batch(cfg, batch, device)
        self.steps_per_epoch = max(1, CIFAR_TRAIN // batch)
        self.method.plan(plan_epochs, self.steps_per_epoch)
        calibration = [self.images] * int(cfg.quant.calib_batches)
        self.method.set_calibration_source(lambda: iter(calibration))
        self.method.prepare(self.model, iter(calibration))
        self.epoch = int(0.7 * plan_epochs)
        self.step = self.epoch * self.steps_per_epoch
        self.method.on_epoch_start(self.model, self.epoch, plan_epochs)
        self.model.train()
        self.optimizer = build_optimizer(cfg.optim, self.method.param_groups(self.model, cfg.optim.weight_decay))
        if variant.unfused:  # torch's default form, as a checkpoint saved before sets it on resume
            for group in self.optimizer.param_groups:
                group["fused"] = None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: method_lr_factor(cfg.sched, self.method, step, self.steps_per_epoch))
        self.criterion = self.method.criterion(float(cfg.trainer.label_smoothing))
        self.forward = torch.compile(self.model, mode=compile_mode) if variant.compile else self.model
        self.autocast = variant.autocast(device)
        self.grad_clip = float(cfg.trainer.grad_clip)
        self.skip_nonfinite = cfg.trainer.get("on_nan", "stop") == "skip_batch"
        self.bits = f"W{self.method.weight_bits}A{self.method.act_bits}"

    def train_step(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One step as the engine's epoch loop runs it (channels_last input, scheduler step)."""
        if self.variant.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss, logits = train_step(self.model, self.forward, self.method, self.optimizer, self.criterion, images,
                                  labels, self.step, self.autocast, self.grad_clip, self.skip_nonfinite)
        self.scheduler.step()
        self.step += 1
        return loss, logits

    def steps(self, count: int) -> None:
        for _ in range(count):
            self.train_step(self.images, self.labels)

    def epoch_loop(self, loader: TensorLoader) -> int:
        """One epoch as ``qnnrun.engine.train`` runs it (loss and accuracy summed on the device,
        one sync at the end); returns the number of images."""
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for images, labels in loader:
            loss, logits = self.train_step(images, labels)
            loss_sum += loss * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
        loss_sum.item()
        return seen


def saved_for_backward_mib(trainer: Trainer) -> float:
    """MiB of the tensors one training forward (with the loss) saves for backward, each storage
    counted once: the activation memory of a step, measurable on any device. A compiled forward
    saves what its partitioner chose to keep (it may recompute element-wise work in backward
    instead), through the same hooks."""
    with SavedForBackward() as saved, trainer.autocast():
        images = trainer.images
        if trainer.variant.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        trainer.criterion(trainer.forward(images).float(), trainer.labels)
    return saved.nbytes / 2**20


def step_traffic(trainer: Trainer) -> tuple[int, float]:
    """Kernels and MiB moved by one eager train step (``qnnrun.metrics.memory.KernelTraffic``): on a
    GPU eager element-wise work is bound by this traffic, so its ratio to float's predicts the
    eager slowdown, and it can be counted on a CPU."""
    with KernelTraffic() as traffic:
        trainer.steps(1)
    return traffic.kernels, traffic.nbytes / 2**20


def graph_count() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def warmed_up(cfg: DictConfig, variant: Variant, device: torch.device,
              args: argparse.Namespace) -> tuple[Trainer, float]:
    """The row's :class:`Trainer` after ``args.warmup`` untimed steps, and their seconds
    (compilation included for a compiled variant)."""
    trainer = Trainer(cfg, variant, device, args.batch, args.plan_epochs, args.compile_mode)
    timer = Timer(device)
    timer.start()
    trainer.steps(args.warmup)
    return trainer, timer.stop()


def fresh_state(device: torch.device) -> None:
    """Forget the previous rows' compiled graphs and free their memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed_steps(trainer: Trainer, steps: int, device: torch.device) -> float:
    """Seconds of ``steps`` train steps."""
    timer = Timer(device)
    timer.start()
    trainer.steps(steps)
    return timer.stop()


def completed(trainer: Trainer, args: argparse.Namespace, warmup_s: float, elapsed: float,
              cold_warmup_s: float | None) -> Result:
    """The row's :class:`Result` from its warm-up and ``args.steps`` timed steps (``elapsed``
    seconds), with what is measured after them: saved MiB, eager kernels and bytes, whole epochs."""
    variant, device = trainer.variant, trainer.device
    result = Result(trainer.cfg.model.name, trainer.cfg.method.name, trainer.bits, variant.label(),
                    args.steps * args.batch / elapsed)
    result.saved_mib = saved_for_backward_mib(trainer)
    if not variant.compile:  # a compiled graph's kernels do not pass through the dispatcher
        result.kernels, result.moved_mib = step_traffic(trainer)
    if variant.compile:  # a warm-up minus its steps at the steady rate
        steady_s = args.warmup * elapsed / args.steps
        result.compile_s = max(0.0, warmup_s - steady_s)
        if cold_warmup_s is not None:
            result.cold_compile_s = max(0.0, cold_warmup_s - steady_s)
    if args.epoch:
        loader = synthetic_loader(trainer.cfg, args.epoch_samples, args.batch, device)
        trainer.epoch_loop(loader)  # warm-up epoch: a short last batch compiles once more
        timer = Timer(device)
        timer.start()
        seen = sum(trainer.epoch_loop(loader) for _ in range(args.epochs))
        result.epoch_images_per_s = seen / timer.stop()
    return result


def measure(cfg: DictConfig, variant: Variant, device: torch.device, args: argparse.Namespace,
            cold_warmup_s: float | None = None) -> Result:
    """Images/s of ``args.steps`` timed train steps (and, with ``--epoch``, of whole epochs).
    ``cold_warmup_s``: the row's warm-up seconds in a ``--precompile`` process (empty caches)."""
    fresh_state(device)
    graphs_before = graph_count()
    trainer, warmup_s = warmed_up(cfg, variant, device, args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed = timed_steps(trainer, args.steps, device)
    peak_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    result = completed(trainer, args, warmup_s, elapsed, cold_warmup_s)
    result.peak_mib = peak_mib
    if variant.compile:
        result.graphs = graph_count() - graphs_before
    return result


@dataclass
class HeldRow:
    """A warmed-up row of :func:`measure_interleaved`: its plan index, trainer, warm-up seconds,
    the graphs it compiled so far and the seconds of its timed steps so far."""

    index: int
    trainer: Trainer
    warmup_s: float
    graphs: int
    elapsed: float = 0.0


def measure_interleaved(rows: list[tuple[int, Row]], device: torch.device, args: argparse.Namespace,
                        cold: dict[int, float]) -> Iterator[tuple[int, Result | Exception]]:
    """``--rounds R``: the rows (one model's, as indices into the plan) warmed up one after another
    and held at once, then timed in ``R`` rounds of ``args.steps / R`` steps, each row in turn, so
    that a change in a shared machine's load falls on every row alike. Yields each row's index with
    its :class:`Result`, or the exception that stopped it (that row leaves the rounds, the others go
    on). ``peak MiB`` is not measured (every row's memory is held at once) and ``--epoch`` epochs are
    timed row by row after the rounds. Each row compiles its own copy of the model's functions, so
    dynamo may recompile them 64 times per row (past its limit a row would silently run eagerly)."""
    fresh_state(device)
    allow_recompiles(64 * len(rows))
    held: list[HeldRow] = []
    for index, row in rows:
        before = graph_count()
        try:
            trainer, warmup_s = warmed_up(row[4], row[3], device, args)
        except Exception as error:  # noqa: BLE001 - one row that cannot run must not lose the others
            yield index, error
            continue
        held.append(HeldRow(index, trainer, warmup_s, graph_count() - before))
    for _ in range(args.rounds):
        for entry in list(held):
            before = graph_count()
            try:
                entry.elapsed += timed_steps(entry.trainer, args.steps // args.rounds, device)
            except Exception as error:  # noqa: BLE001 - as above
                held.remove(entry)
                yield entry.index, error
                continue
            entry.graphs += graph_count() - before
    for entry in held:
        before = graph_count()
        try:
            result = completed(entry.trainer, args, entry.warmup_s, entry.elapsed, cold.get(entry.index))
        except Exception as error:  # noqa: BLE001 - as above
            yield entry.index, error
            continue
        if entry.trainer.variant.compile:
            result.graphs = entry.graphs + graph_count() - before
        yield entry.index, result


def brevitas_model(model_name: str, bits: int, device: torch.device) -> nn.Module:
    """The float model with Brevitas ``QuantConv2d`` / ``QuantReLU`` at ``bits`` in place of every
    conv and ReLU but the first conv and the classifier (method=ste's default layer policy)."""
    import brevitas.nn as qnn

    cfg = compose_run(model_name, "fp", 32, [])
    info = dataset_info(cfg.dataset)
    model = build_model(cfg.model, in_channels=info.in_channels, num_classes=info.num_classes,
                        image_size=info.image_size)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, nn.Conv2d) and name != convs[0]:
            replacement = qnn.QuantConv2d(module.in_channels, module.out_channels, module.kernel_size,
                                          stride=module.stride, padding=module.padding, groups=module.groups,
                                          bias=module.bias is not None, weight_bit_width=bits)
            setattr(parent, child, replacement)
        elif isinstance(module, nn.ReLU) and name:
            setattr(parent, child, qnn.QuantReLU(bit_width=bits))
    return model.to(device)


def measure_brevitas(model_name: str, bits: int, device: torch.device, args: argparse.Namespace) -> Result:
    """Images/s of plain SGD steps (cross-entropy, no method hooks) of :func:`brevitas_model`."""
    torch.manual_seed(0)
    model = brevitas_model(model_name, bits, device).train()
    images, labels = synthetic_batch(compose_run(model_name, "fp", 32, []), args.batch, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    def steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images), labels).backward()
            optimizer.step()

    timer = Timer(device)
    steps(args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer.start()
    steps(args.steps)
    elapsed = timer.stop()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Result(model_name, "brevitas", f"W{bits}A{bits}", "eager", args.steps * args.batch / elapsed, peak,
                  note="QuantConv2d / QuantReLU, first conv and classifier float")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def table(results: list[Result], epoch: bool, precompiled: bool = False) -> str:
    """The Markdown table of ``results``."""
    head = ["model", "method", "bits", "variant", "images/s", "ratio to float", "peak MiB", "memory vs float",
            "saved MiB", "saved vs float", "kernels", "moved MiB", "moved vs float", "compile s", "graphs"]
    if precompiled:
        head.insert(head.index("graphs"), "cold compile s")
    if epoch:
        head += ["epoch images/s", "epoch / step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|"]

    def num(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    for r in results:
        cells = [r.model, r.method, r.bits, r.variant + (f" ({r.note})" if r.note else ""), num(r.images_per_s, ".0f"),
                 num(r.ratio, ".2f"), num(r.peak_mib, ".0f"), num(r.memory_ratio, ".2f"), num(r.saved_mib, ".1f"),
                 num(r.saved_ratio, ".2f"), num(r.kernels, "d"), num(r.moved_mib, ".0f"), num(r.moved_ratio, ".2f"),
                 num(r.compile_s, ".1f"), num(r.graphs, "d")]
        if precompiled:
            cells.insert(-1, num(r.cold_compile_s, ".1f"))
        if epoch:
            cells += [num(r.epoch_images_per_s, ".0f"),
                      num(r.epoch_images_per_s / r.images_per_s if r.epoch_images_per_s else None, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs(args: argparse.Namespace) -> Iterator[tuple[str, str, int, Variant]]:
    """(model, method, bits, variant) in table order: each model's float fp32 eager reference first."""
    variants = [Variant(compile=c, channels_last=cl, bf16=bf, recompute=rc, unfused=uf)
                for c in ([False, True] if args.compile else [False])
                for cl in ([False, True] if args.channels_last else [False])
                for bf in ([False, True] if args.bf16 else [False])
                for rc in ([False, True] if args.recompute and not c else [False])
                for uf in ([False, True] if args.unfused else [False])]
    for model in args.models:
        yield model, "fp", 32, Variant()
        for method in args.methods:
            for bits in ([32] if method == "fp" else args.bits):
                for variant in variants:
                    if method == "fp" and (variant == Variant() or variant.recompute):
                        continue  # the reference, measured above; float has no quantizer to replay
                    yield model, method, bits, variant


Row = tuple[str, str, int, Variant, DictConfig]  # model, method, bits asked for, variant, its train config


def print_failed(model: str, method: str, bits: int, variant: Variant, error: Exception) -> None:
    """One line for a row that could not be built or timed: its error's type and first line."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    print(f"FAILED {model} {method} {bits} bits {variant.label()}: {type(error).__name__}: {first_line}", flush=True)


def plan_rows(args: argparse.Namespace) -> list[Row]:
    """The rows of :func:`runs` with their configs, each (model, method, bits it runs at, variant)
    once (bnn runs at 1 bit whatever ``--bits`` says); a method that does not take the bits is skipped."""
    planned: list[Row] = []
    seen: set[tuple[str, str, int, int, str]] = set()
    for model, method, bits, variant in runs(args):
        try:
            cfg = compose_run(model, method, bits, args.overrides)
            bound = build_method(cfg)
        except QnnrunError as error:  # e.g. a method that does not take these bits
            print(f"skipped {model} {method} {bits} bits {variant.label()}: {error}", flush=True)
            continue
        except Exception as error:  # noqa: BLE001 - one row that cannot be built must not lose the others
            print_failed(model, method, bits, variant, error)
            continue
        key = (model, method, bound.weight_bits, bound.act_bits, variant.label())
        if key not in seen:
            seen.add(key)
            planned.append((model, method, bits, variant, cfg))
    return planned


def warm_up_seconds(cfg: DictConfig, variant: Variant, args: argparse.Namespace) -> float:
    """A ``--precompile`` worker: the warm-up of one row in a fresh process (compilation included),
    in seconds, and with ``--epoch`` one epoch after it (its short last batch compiles too)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    # Each process would start a pool of one compile worker per core: share the cores instead.
    torch._inductor.config.compile_threads = max(1, (os.cpu_count() or 1) // args.precompile)
    device = select_device(args.device)
    trainer, seconds = warmed_up(cfg, variant, device, args)
    if args.epoch:
        trainer.epoch_loop(synthetic_loader(cfg, args.epoch_samples, args.batch, device))
    return seconds


def precompile(planned: list[Row], args: argparse.Namespace) -> dict[int, float]:
    """``--precompile N``: the warm-up of every compiled row in ``N`` processes at once, before
    anything is timed. Each compiles with empty caches and fills inductor's and AOT autograd's
    on-disk caches, so that the timed rows after it compile from them: a table of many compiled
    rows takes about ``1/N`` of the compile time (the cores compile ``N`` graphs at once). Returns
    each compiled row's warm-up seconds by its index in ``planned`` (failed rows are left out)."""
    compiled = [index for index, row in enumerate(planned) if row[3].compile]
    print(f"precompiling {len(compiled)} compiled rows, {args.precompile} at once", flush=True)
    seconds: dict[int, float] = {}
    with ProcessPoolExecutor(args.precompile, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(warm_up_seconds, planned[index][4], planned[index][3], args): index
                   for index in compiled}
        for future in as_completed(futures):
            index = futures[future]
            model, method, bits, variant, _ = planned[index]
            try:
                seconds[index] = future.result()
            except Exception as error:  # noqa: BLE001 - the timed row reports it; the others go on
                print(f"FAILED precompile {model} {method} {bits} bits {variant.label()}: {type(error).__name__}",
                      flush=True)
                continue
            print(f"precompiled {model} {method} {bits} bits {variant.label()}: warm-up {seconds[index]:.1f} s",
                  flush=True)
    return seconds


def measured(planned: list[Row], device: torch.device, args: argparse.Namespace,
             cold: dict[int, float]) -> Iterator[tuple[int, Result | Exception]]:
    """Each planned row's index with its Result, or the exception that stopped it: row by row, or
    with ``--rounds`` each model's rows interleaved (:func:`measure_interleaved`)."""
    if args.rounds > 1:
        for model in dict.fromkeys(args.models):
            yield from measure_interleaved([(i, row) for i, row in enumerate(planned) if row[0] == model],
                                           device, args, cold)
        return
    for index, (_, _, _, variant, cfg) in enumerate(planned):
        try:
            yield index, measure(cfg, variant, device, args, cold.get(index))
        except Exception as error:  # noqa: BLE001 - reported by the caller; the other rows go on
            yield index, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD",
                        help=f"default: {' '.join(METHODS)}")
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 4], help="W and A bits of each row (default 2 4)")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="config overrides for every run, e.g. quant.per_channel=false")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed train steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=1, metavar="R",
                        help="time each model's rows together, in R interleaved rounds of steps/R steps each, so "
                             "that a shared machine's changing load falls on every row alike (default 1: row by row; "
                             "peak MiB is then not measured, and --epoch epochs are still timed row by row)")
    parser.add_argument("--plan-epochs", type=int, default=60, help="length of the notional run the hooks are told")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    parser.add_argument("--channels-last", action="store_true", help="add channels_last variants")
    parser.add_argument("--bf16", action="store_true", help="add bf16-autocast variants")
    parser.add_argument("--unfused", action="store_true",
                        help="add variants whose optimizer runs torch's default form (qnnrun builds the fused one)")
    parser.add_argument("--recompute", action="store_true",
                        help="add eager variants with trainer.recompute_quant (quantized inputs replayed in backward)")
    parser.add_argument("--epoch", action="store_true", help="also time whole epochs through the data loader")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per row with --epoch (after one warm-up)")
    parser.add_argument("--epoch-samples", type=int, default=CIFAR_TRAIN, help="images per epoch with --epoch")
    parser.add_argument("--no-brevitas", action="store_true", help="leave out the Brevitas rows")
    parser.add_argument("--gpu-kernels", action="store_true",
                        help="on a CPU, take the kernels a GPU takes (ATen's one-pass fake quantize), so that the "
                             "kernels and moved MiB columns count a GPU's eager step")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--precompile", type=int, default=0, metavar="N",
                        help="with --compile: first compile every compiled row in N processes at once, filling "
                             "inductor's on-disk caches, then time the rows one by one (their 'compile s' is then "
                             "from the caches; 'cold compile s' is the empty-cache warm-up in the pool, N at once)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode of the compiled variants (default: torch's; e.g. reduce-overhead "
                             "for CUDA graphs, max-autotune-no-cudagraphs)")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps % args.rounds:
        parser.error(f"--rounds {args.rounds}: give a positive divisor of --steps ({args.steps})")
    if args.precompile and not args.compile:
        parser.error("--precompile needs --compile (it compiles the compiled rows ahead)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.gpu_kernels:
        Q.FUSED_KERNEL_DEVICES = Q.FUSED_KERNEL_DEVICES | {device.type}
    torch.backends.cudnn.benchmark = True  # as qnnrun.build.seed_everything sets it for training
    print(f"{device.type}: {device_name(device)}; torch {torch.__version__}; {date.today()}; batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up"
          + (f"; each model's rows interleaved in {args.rounds} rounds" if args.rounds > 1 else "")
          + (f"; compile mode {args.compile_mode}" if args.compile and args.compile_mode else "")
          + (f"; compiled rows precompiled {args.precompile} at once" if args.precompile else "")
          + (f"; epochs of {args.epoch_samples} images" if args.epoch else "")
          + ("; a GPU's fake-quantize kernels taken on this device (--gpu-kernels)" if args.gpu_kernels else ""),
          flush=True)

    planned = plan_rows(args)
    cold = precompile(planned, args) if args.precompile else {}
    results: list[Result] = []
    reference: dict[str, Result] = {}
    for index, result in measured(planned, device, args, cold):
        model, method, bits, variant, _ = planned[index]
        if isinstance(result, Exception):  # one failing row (a compile error) must not lose the others
            print_failed(model, method, bits, variant, result)
            continue
        if method == "fp" and variant == Variant():
            reference[model] = result
        results.append(result)
        print(f"{model} {method} {result.bits} {variant.label()}: {result.images_per_s:.0f} images/s", flush=True)
        if args.json:  # after every row: a run cut short by a time limit keeps what it measured
            add_ratios(results, reference)
            write_json(args.json, results, device, args)

    brevitas_note = ""
    if importlib.util.find_spec("brevitas") is None:
        brevitas_note = "brevitas is not installed (pip install -e '.[bench]'): no Brevitas rows"
    else:
        for model in [] if args.no_brevitas else args.models:
            for bits in args.bits:
                try:
                    results.append(measure_brevitas(model, bits, device, args))
                except Exception as error:  # noqa: BLE001 - Brevitas's own limits (e.g. 1 bit): report, go on
                    print(f"skipped brevitas {model} {bits} bits: {type(error).__name__}: {error}", flush=True)

    add_ratios(results, reference)
    print()
    print(table(results, args.epoch, bool(args.precompile)))
    if brevitas_note and not args.no_brevitas:
        print(f"\n{brevitas_note}")
    if args.json:
        write_json(args.json, results, device, args)


def add_ratios(results: list[Result], reference: dict[str, Result]) -> None:
    """Set each row's ratios to its model's float fp32 eager row (rows before that row keep None)."""
    for r in results:
        ref = reference.get(r.model)
        if ref is not None:
            r.ratio = r.images_per_s / ref.images_per_s
            if r.peak_mib is not None and ref.peak_mib:
                r.memory_ratio = r.peak_mib / ref.peak_mib
            if r.saved_mib is not None and ref.saved_mib:
                r.saved_ratio = r.saved_mib / ref.saved_mib
            if r.moved_mib is not None and ref.moved_mib:
                r.moved_ratio = r.moved_mib / ref.moved_mib


def write_json(path: str, results: list[Result], device: torch.device, args: argparse.Namespace) -> None:
    """The rows so far as JSON at ``path`` (replaced whole each time)."""
    with open(path, "w") as f:
        json.dump({"device": device_name(device), "torch": torch.__version__, "date": str(date.today()),
                   "args": vars(args), "rows": [asdict(r) for r in results]}, f, indent=1)


if __name__ == "__main__":
    main()
