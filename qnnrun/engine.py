"""The training loop: the epoch loop and the order of the method hooks, logging, checkpoints, signals.

One run writes into its folder (``run_dir``)::

    events.out.tfevents.*   TensorBoard: train/test curves, lr, time/*, quant/*, the costs (text), hparams
    last.ckpt, best.ckpt    checkpoints (atomic writes; ``resume=true`` continues from last.ckpt)
    bops.txt, bops.csv      per-layer BOPs / MACs / weight memory table
    summary.json            final metrics, costs, timing; ``"status": "done"`` once finished
    .hydra/, train.log      Hydra's resolved config and the log
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from qnnrun.checkpoint import FORMAT, load_checkpoint, save_atomic, write_text_atomic
from qnnrun import distributed
from qnnrun.build import (build_quantized_model, check_init_from, example_input, init_test_acc, seed_everything,
                          select_device)
from qnnrun.config import PRECISIONS, validate_train, warn_unused_method_options
from qnnrun.data import DataInfo, build_data
from qnnrun.errors import Interrupted, QnnrunError
# Imported into this namespace because _train calls them from here (tests patch ``engine.evaluate``).
from qnnrun.evaluate import EvalResult, evaluate, reestimate_batchnorm
from qnnrun.methods import METHODS, Method
from qnnrun.metrics.bops import format_table, layer_costs, totals
from qnnrun.optim import build_optimizer, method_lr_factor
from qnnrun.quant.convert import LAYER_POLICIES
from qnnrun.runs import (BEST_CKPT, BITS_DOMAIN, LAST_CKPT, STEP_CURVES, SUMMARY, check_resume_config,
                         continue_command, log_costs, log_epoch, log_hparams, prepare_run_dir, refuse_existing_run,
                         resolve_resume)

log = logging.getLogger("qnnrun")


def train_step(model: nn.Module, forward: nn.Module, method: Method, optimizer: torch.optim.Optimizer,
               criterion: nn.Module, images: Tensor, labels: Tensor, step: int,
               autocast: Any = nullcontext, grad_clip: float = 0.0,
               skip_nonfinite: bool = False) -> tuple[Tensor, Tensor]:
    """One optimizer step with the method's hooks around it.

    Args:
        model: the (quantized) model the method and optimizer act on.
        forward: what computes the logits: ``model`` itself or ``torch.compile(model)``.
        images: [B, C, H, W] float on the model's device; labels: [B] int64.
        step: global 0-based step number, passed to the method's hooks.
        skip_nonfinite: when the loss is NaN or infinite, leave the weights, buffers (running
            statistics) and optimizer untouched (a buffer copy and one host sync per step); the
            method's after-step hook still runs, so its per-step state (e.g. SQ's float rows) is reset.

    Returns:
        The loss (0-d, detached; NaN on every rank when the step was skipped) and the logits
        [B, classes] (detached).
    """
    method.before_step(model, step)
    # A skipped batch must not leave its trace in running statistics (BatchNorm, activation ranges).
    buffers = [(b, b.clone()) for b in model.buffers()] if skip_nonfinite else []
    with autocast():
        logits = forward(images)
        loss = criterion(logits.float(), labels)
        extra = method.regularization(model)
        if extra is not None:
            loss = loss + extra
    optimizer.zero_grad(set_to_none=True)
    if skip_nonfinite and not finite_everywhere(loss):
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        method.after_optimizer_step(model, step)
        return torch.full_like(loss.detach(), math.nan), logits.detach()
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    method.after_optimizer_step(model, step)
    return loss.detach(), logits.detach()


class _Progress:
    """tqdm bar over one epoch's batches, or plain iteration when disabled or when stderr is not a
    terminal (a redirected log, Slurm, CI: the epoch's log line is all it gets, no ``\r`` frames)."""

    def __init__(self, batches: Iterable[Any], total: int, enabled: bool, desc: str, initial: int = 0) -> None:
        self.bar = (tqdm(batches, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
                    if enabled and sys.stderr.isatty() else None)
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self.bar if self.bar is not None else self.batches)

    def show(self, **values: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run one training described by the composed ``train`` config; returns the summary.

    Everything is written into ``run_dir`` (or into the folder of the checkpoint given by
    ``resume=PATH``); ``overrides`` (the command line's) are kept in ``summary.json``. With
    ``trainer.devices=N > 1`` the run is spawned as N data-parallel ranks; under torchrun this
    process is one rank (see :mod:`qnnrun.distributed`).
    """
    validate_train(cfg)
    warn_unused_method_options(cfg, log)
    if cfg.trainer.devices > 1 and not distributed.launched_by_torchrun():
        resume_from, run_dir = resolve_resume(cfg.resume, run_dir)
        if resume_from is None:
            refuse_existing_run(run_dir)
        prepare_run_dir(run_dir)
        return distributed.spawn(train, OmegaConf.to_container(cfg, resolve=True), run_dir, cfg.trainer.devices,
                                 list(overrides))
    ranks, rank_device = distributed.init(cfg.trainer.device)
    try:
        return _train(cfg, distributed.broadcast_path(run_dir, ranks), ranks,
                      rank_device or select_device(cfg.trainer.device), overrides)
    finally:
        distributed.finish(ranks)


def _train(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks, device: torch.device,
           overrides: Sequence[str]) -> dict[str, Any]:
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    resume_from, run_dir = resolve_resume(cfg.resume, run_dir)
    if ranks.main:
        if resume_from is None:
            refuse_existing_run(run_dir)
        prepare_run_dir(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = None
    extensions: list[dict[str, int]] = []
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        check_resume_config(checkpoint["config"], config, resume_from, extend=cfg.get("extend") is True)
        extensions = list(checkpoint.get("extensions", []))
        epochs_before = checkpoint["config"]["trainer"]["epochs"]
        if epochs_before != cfg.trainer.epochs:  # extend=true: checked above
            extensions.append({"at_epoch": int(checkpoint["epoch"]), "epochs_before": int(epochs_before),
                               "epochs": int(cfg.trainer.epochs)})
            log.info("extending %s from %d to %d epochs at epoch %d", resume_from, epochs_before,
                     cfg.trainer.epochs, checkpoint["epoch"])

    init_from = None if checkpoint is not None else cfg.init_from
    if init_from:
        check_init_from(init_from)
    data = build_data(cfg.dataset, data_dir=cfg.paths.data_dir, cache_dir=cfg.paths.cache_dir,
                      device=device, seed=cfg.seed)
    if ranks.active:  # every rank draws the same global batches and trains on its share
        data.train.shard(ranks.rank, ranks.world)
        data.test.shard(ranks.rank, ranks.world)
    info = data.info
    model, method = build_quantized_model(cfg, info, device, init_from)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    costs = layer_costs(model, example_input(info, device, 1))
    cost = totals(model, costs)
    optimizer = build_optimizer(cfg.optim, method.param_groups(model, cfg.optim.weight_decay))
    epochs = cfg.trainer.epochs
    steps_per_epoch = len(data.train)
    method.plan(epochs, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: method_lr_factor(cfg.sched, method, step, steps_per_epoch))
    method.set_calibration_source(lambda: (images for images, _ in _take(data.train, cfg.quant.calib_batches)))
    start_epoch, best_acc, history = 0, -1.0, []
    init_acc = init_test_acc(cfg.init_from)  # what test/vs_init is measured from
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        method.load_state_dict(checkpoint["method"])
        method.restore_model(model)
        start_epoch, best_acc, history = checkpoint["epoch"], checkpoint["best_acc"], checkpoint["history"]
        log.info("resuming %s at epoch %d of %d", resume_from, start_epoch, epochs)
    else:
        method.prepare(model, (images for images, _ in _take(data.train, cfg.quant.calib_batches)))

    if ranks.main:
        write_text_atomic(run_dir / "bops.txt", format_table(costs, cost) + "\n")
        table = io.StringIO()
        rows = [c.row() for c in costs]
        writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(run_dir / "bops.csv", table.getvalue())
    smaller = f" ({cost['compression']:.1f}x smaller than FP32)" if method.quantizes else " (float)"
    log.info("%s %s W%d/A%d on %s (%s): %.4f GBOPs/image, %.3f MiB weights%s", cfg.method.name, cfg.model.name,
             method.weight_bits, method.act_bits, info.name, device, cost["bops"] / 1e9, cost["weight_memory_mb"],
             smaller)

    from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import

    writer = SummaryWriter(str(run_dir), purge_step=start_epoch + 1 if start_epoch else None) if ranks.main else None
    if writer is not None and checkpoint is None:
        log_costs(writer, cost)
    if cfg.trainer.compile:
        _allow_recompiles(64)
        if data.train.num_samples % data.train.batch_size and not cfg.dataset.get("drop_last", False):
            log.info("trainer.compile: the last batch of each epoch is short (%d samples); dataset.drop_last=true "
                     "saves its extra compilation", data.train.num_samples % data.train.batch_size)
    compiled = torch.compile(model) if cfg.trainer.compile else model  # evaluation (and training on one rank)
    forward = compiled
    if ranks.active:  # after prepare/resume: DDP starts every rank from rank 0's weights and buffers
        forward = distributed.wrap(model, ranks, device, method.static_parameters)
        forward = torch.compile(forward) if cfg.trainer.compile else forward
    use_bf16 = cfg.trainer.precision == "bf16"

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    criterion = method.criterion(cfg.trainer.label_smoothing)
    skip_nonfinite = cfg.trainer.on_nan == "skip_batch"
    partial = checkpoint.get("partial") if checkpoint is not None else None
    if partial is not None and partial["steps_per_epoch"] != steps_per_epoch:
        raise QnnrunError(f"cannot resume {resume_from} mid-epoch: it was saved with {partial['steps_per_epoch']} "
                          f"batches per epoch, this run has {steps_per_epoch} (same dataset.batch_size needed)")
    step = start_epoch * steps_per_epoch
    save = save_atomic if ranks.main else _no_save
    warming_up = bool(cfg.trainer.compile)  # the first step compiles: timed apart from the epoch
    log_every = int(cfg.trainer.get("log_every_steps", 0))
    bn_batches = int(cfg.quant.get("bn_reestimate_batches", 0))

    def evaluate_test() -> EvalResult:
        if bn_batches:  # BatchNorm statistics of the network as evaluated (rank 0's for every rank)
            reestimate_batchnorm(model, _take(data.train, bn_batches), autocast, cfg.trainer.channels_last)
            distributed.sync_buffers(model, ranks)
        return evaluate(compiled, data.test, info.num_classes, autocast, cfg.trainer.channels_last)

    resumed_at = step + (partial["batches"] if partial is not None else 0)
    # Step curves have event files of their own (TensorBoard run "<run>/steps"): a resume purges the
    # epoch curves from an epoch number, these from a step number.
    step_writer = (SummaryWriter(str(run_dir / STEP_CURVES), purge_step=resumed_at + 1 if resumed_at else None)
                   if log_every and ranks.main else None)
    with StopRequest() as stop:
        for epoch in range(start_epoch, epochs):
            # Per-epoch seeds make an epoch's randomness (order, augmentation, dropout, noise) the same
            # whether the run was interrupted before it or not.
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            data.train.set_epoch(epoch)
            method.on_epoch_start(model, epoch, epochs)
            model.train()
            tally = _EpochTally(device)
            batches = iter(data.train)
            if partial is not None:  # resume mid-epoch: replay the epoch up to where it stopped
                for _ in range(partial["batches"]):
                    next(batches)
                tally.restore(partial, ranks)
                method.load_state_dict(checkpoint["method"])  # after on_epoch_start rebuilt the epoch's state
                _set_rng_state(partial["rng"])
                step += partial["batches"]
                log.info("resuming epoch %d at batch %d of %d", epoch + 1, partial["batches"], steps_per_epoch)
                partial = None
            progress = _Progress(batches, steps_per_epoch, cfg.trainer.progress and ranks.main,
                                 f"epoch {epoch + 1}/{epochs}", initial=tally.batches)
            for images, labels in progress:
                if cfg.trainer.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if warming_up:
                    _synchronize(device)
                    compile_start = time.perf_counter()
                loss, logits = train_step(model, forward, method, optimizer, criterion, images, labels, step,
                                          autocast, cfg.trainer.grad_clip, skip_nonfinite)
                if warming_up:
                    _synchronize(device)
                    tally.compile_s = time.perf_counter() - compile_start
                    log.info("torch.compile warm-up (first step): %.1f s, left out of the epoch's time",
                             tally.compile_s)
                    warming_up = False
                distributed.sync_buffers(model, ranks)
                scheduler.step()
                tally.add(loss, logits, labels, step, skip_nonfinite)
                step += 1
                if step_writer is not None and step % log_every == 0:
                    _log_step(step_writer, step, loss, optimizer.param_groups[0]["lr"], method.scalars(model))
                due = step % 10 == 0 or tally.batches == steps_per_epoch
                if ranks.active:  # the ranks agree on stopping every 10 steps (a collective)
                    stopping = due and distributed.any_rank(stop.signum is not None, device, ranks)
                else:
                    stopping = stop.signum is not None
                if due or stopping:
                    tally.check_finite(epoch, steps_per_epoch, cfg, run_dir, ranks)
                    if progress.bar is not None and tally.seen:
                        progress.show(loss=tally.loss_sum.item() / tally.seen,
                                      acc=100.0 * tally.correct.item() / tally.seen)
                if stopping and tally.batches < steps_per_epoch:
                    progress.close()
                    state = _state(config, epoch, model, optimizer, scheduler, method, best_acc, history, info,
                                   extensions)
                    state["partial"] = tally.state(steps_per_epoch, ranks)
                    save(state, run_dir / LAST_CKPT)
                    raise _interrupted(stop.signum or signal.SIGTERM, run_dir, f"epoch {epoch + 1}, batch "
                                       f"{tally.batches} of {steps_per_epoch}")
            progress.close()
            _synchronize(device)
            tally.check_finite(epoch, steps_per_epoch, cfg, run_dir, ranks)
            distributed.check_agreement(model, ranks, device)
            metrics = tally.metrics(epoch, optimizer.param_groups[0]["lr"], ranks)
            if metrics["train_samples"] == 0:
                raise QnnrunError(f"every batch of epoch {epoch + 1} had a non-finite loss and was skipped "
                                  f"(trainer.on_nan=skip_batch): the weights have diverged; lower optim.lr "
                                  f"(now {cfg.optim.lr}) and resume from a checkpoint before the divergence")
            if (epoch + 1) % cfg.trainer.eval_every == 0 or epoch + 1 == epochs:
                result = evaluate_test()
                metrics.update(test_loss=result.loss, test_acc=result.acc)
                if result.top5 is not None:
                    metrics["test_top5"] = result.top5
            metrics.update({f"quant/{k}": v for k, v in method.scalars(model).items()})
            improved = metrics.get("test_acc", -1.0) > best_acc
            if improved:
                best_acc = metrics["test_acc"]
            metrics.update(_accuracy_marks(metrics, best_acc, init_acc))
            history.append(metrics)
            if writer is not None:
                log_epoch(writer, metrics)
            state = _state(config, epoch + 1, model, optimizer, scheduler, method, best_acc, history, info,
                                   extensions)
            save(state, run_dir / LAST_CKPT)
            if improved:
                save(state, run_dir / BEST_CKPT)
            skipped = f"  ({tally.skipped} non-finite batches skipped)" if tally.skipped else ""
            log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %s  %.1fs (%.0f img/s)%s", epoch + 1, epochs,
                     metrics["train_loss"], metrics["train_acc"],
                     f"{metrics['test_acc']:.2f}%" if "test_acc" in metrics else "-", metrics["epoch_time_s"],
                     metrics["images_per_s"], skipped)
            if epoch + 1 < epochs and distributed.any_rank(stop.signum is not None, device, ranks):
                raise _interrupted(stop.signum or signal.SIGTERM, run_dir, f"the end of epoch {epoch + 1}")

    if not history or "test_acc" not in history[-1]:  # epochs=0: evaluate the starting point
        result = evaluate_test()
        entry = {"epoch": epochs, "test_loss": result.loss, "test_acc": result.acc,
                 **({"test_top5": result.top5} if result.top5 is not None else {})}
        entry.update(_accuracy_marks(entry, max(best_acc, result.acc), init_acc))
        history.append(entry)
        if writer is not None:
            log_epoch(writer, entry)
    summary = _summary(cfg, method, info, history, best_acc, cost, init_acc)
    summary.update(extensions=extensions, overrides=list(overrides), run_dir=str(run_dir.resolve()))
    change = None if summary["init_test_acc"] is None else summary["test_acc"] - summary["init_test_acc"]
    if writer is not None:
        log_hparams(writer, _hparams(cfg, method, info, summary), HPARAM_DOMAINS)
        writer.close()
        if step_writer is not None:
            step_writer.close()
        write_text_atomic(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    since = "" if change is None else f"; {change:+.2f} from init_from's {summary['init_test_acc']:.2f}%"
    log.info("done: test accuracy %.2f%% (best %.2f%%%s), results in %s", summary["test_acc"],
             summary["best_test_acc"], since, run_dir)
    return summary


class StopRequest:
    """Turns SIGINT/SIGTERM (what a cluster scheduler sends before pre-emption) into a request that
    the training loop honours after the current step: it writes ``last.ckpt`` and stops.

    Installed only in the main thread, where Python delivers signals. A second signal more than
    ``REPEAT_S`` seconds after the first restores the previous handler and re-delivers itself, so
    the process stops at once (checkpoint writes are atomic: ``last.ckpt`` stays whole); a repeat
    within that time is the same request arriving twice (to the process group and forwarded by a
    ``trainer.devices`` parent) and is ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 2.0

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at > self.REPEAT_S:
            signal.signal(signum, self._previous[signum] or signal.SIG_DFL)
            signal.raise_signal(signum)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler or signal.SIG_DFL)
        self._previous.clear()


def _interrupted(signum: int, run_dir: Path, where: str) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(f"stopped by {name} at {where}: checkpoint written to {run_dir / LAST_CKPT}; continue "
                       f"this run with {continue_command(run_dir)} (a sweep: its command plus resume=true)", signum)


class _EpochTally:
    """Running train metrics of one epoch, kept on the device (no host sync per step).

    Non-finite losses are noted with their global step; ``check_finite`` (called every few steps)
    turns them into the divergence error. With ``skip`` the caller already synced on the loss, and
    skipped batches are only counted.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.seen = 0  # samples that trained
        self.batches = 0  # batches done, skipped ones included
        self.skipped = 0
        self.elapsed = 0.0  # seconds spent in this epoch before a resume
        self.compile_s = 0.0  # torch.compile warm-up in this epoch, not counted in its time
        self.start = time.perf_counter()

    def seconds(self) -> float:
        """Training seconds of this epoch so far (before a resume too), the compile warm-up left out."""
        return self.elapsed + time.perf_counter() - self.start - self.compile_s

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor, step: int, skip: bool) -> None:
        """Count one batch; with ``skip``, a NaN ``loss`` is :func:`train_step`'s mark of a skipped step."""
        self.batches += 1
        if skip and not bool(torch.isfinite(loss)):
            self.skipped += 1
            return
        if not skip:
            self.first_bad = torch.where(~torch.isfinite(loss) & (self.first_bad < 0), step, self.first_bad)
        self.loss_sum += loss.double() * labels.numel()
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.numel()

    def check_finite(self, epoch: int, steps_per_epoch: int, cfg: DictConfig, run_dir: Path,
                     ranks: distributed.Ranks) -> None:
        """Raise the divergence error if a training loss so far was NaN or infinite (on any rank)."""
        if ranks.active:  # the first bad step of any rank; none = 2^62
            first = torch.where(self.first_bad < 0, 2**62, self.first_bad)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            bad = int(first) if int(first) < 2**62 else -1
        else:
            bad = int(self.first_bad)
        if bad < 0:
            return
        kept = f"{run_dir / LAST_CKPT} (epoch {epoch}) is kept" if epoch else "no checkpoint was written"
        raise QnnrunError(f"training diverged: non-finite loss at epoch {epoch + 1}, batch {bad % steps_per_epoch + 1} "
                          f"(global step {bad}). Likely cause: a learning rate too high for this method and bit "
                          f"width (optim.lr={cfg.optim.lr}) or bad input data; {kept}; trainer.on_nan=skip_batch "
                          f"skips such batches instead")

    def totals(self, ranks: distributed.Ranks) -> tuple[float, int, int]:
        """(loss sum, correct, samples) of this epoch so far, summed over ranks."""
        values = torch.stack([self.loss_sum, self.correct.double(),
                              torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64)])
        loss_sum, correct, seen = distributed.sum_over_ranks(values, ranks).tolist()
        return loss_sum, int(correct), int(seen)

    def metrics(self, epoch: int, lr: float, ranks: distributed.Ranks) -> dict[str, Any]:
        """The epoch's train metrics over all ranks (every rank must call this)."""
        loss_sum, correct, seen = self.totals(ranks)
        seconds = self.seconds()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(1, seen),
            "train_acc": 100.0 * correct / max(1, seen),
            "train_samples": seen,
            "lr": lr,
            "epoch_time_s": seconds,
            "images_per_s": seen / seconds,
        }
        if self.skipped:
            metrics["skipped_batches"] = self.skipped
        if self.compile_s:
            metrics["compile_s"] = self.compile_s
        return metrics

    def state(self, steps_per_epoch: int, ranks: distributed.Ranks) -> dict[str, Any]:
        """What a mid-epoch checkpoint needs to finish this epoch as if never stopped (sums over ranks)."""
        loss_sum, correct, seen = self.totals(ranks)
        return {"batches": self.batches, "steps_per_epoch": steps_per_epoch, "loss_sum": loss_sum,
                "correct": correct, "seen": seen, "skipped": self.skipped,
                "elapsed_s": self.seconds(), "rng": _rng_state()}

    def restore(self, state: Mapping[str, Any], ranks: distributed.Ranks) -> None:
        """Continue from :meth:`state`; the sums over ranks go to rank 0, so they are counted once."""
        if ranks.main:
            self.loss_sum.fill_(state["loss_sum"])
            self.correct.fill_(state["correct"])
            self.seen = state["seen"]
        self.batches, self.skipped = state["batches"], state["skipped"]
        self.elapsed = state["elapsed_s"]


def _rng_state() -> dict[str, Any]:
    """The global torch RNG states: CPU, and the current CUDA device's when CUDA is in use."""
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


def _allow_recompiles(limit: int) -> None:
    """Let dynamo recompile a frame up to ``limit`` times: methods whose layer states change during the
    run (UNIQ stages, NBN/FBF/LBL progressions: about 36 changes on ResNet-20) recompile at each
    change, and past dynamo's default of 8 the model would silently run eagerly."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7 name
    setattr(config, name, max(getattr(config, name), limit))


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _no_save(state: dict[str, Any], path: Path) -> None:
    """Ranks other than 0 write no files."""


def finite_everywhere(loss: Tensor) -> bool:
    """True when ``loss`` (0-d) is finite on this process and, when distributed, on every rank."""
    finite = torch.isfinite(loss.detach()).double().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _state(config: dict[str, Any], epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: Any, method: Method, best_acc: float, history: list[dict[str, Any]],
           info: DataInfo, extensions: list[dict[str, int]]) -> dict[str, Any]:
    """A checkpoint after ``epoch`` completed epochs (see :mod:`qnnrun.checkpoint`)."""
    return {
        "format": FORMAT, "epoch": epoch, "config": config, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "method": method.state_dict(), "best_acc": best_acc, "history": history, "info": asdict(info),
        "extensions": extensions,
    }


def _take(batches: Iterable[Any], count: int) -> Iterator[Any]:
    for index, batch in enumerate(batches):
        if index >= count:
            return
        yield batch


def _log_step(writer: Any, step: int, loss: Tensor, lr: float, scalars: Mapping[str, float]) -> None:
    """``trainer.log_every_steps``: the last batch's loss, the learning rate and the method's scalars
    (``Method.scalars``: LSQ steps, PACT clip levels, ...) against the number of optimizer steps
    done, under ``step/``. Costs a host sync per scalar."""
    writer.add_scalar("step/train_loss", float(loss), step)
    writer.add_scalar("step/lr", lr, step)
    for key, value in scalars.items():
        writer.add_scalar(f"step/quant/{key}", value, step)


def _accuracy_marks(metrics: Mapping[str, Any], best_acc: float, init_acc: float | None) -> dict[str, float]:
    """An evaluated epoch's best test accuracy so far and, from an ``init_from`` net, the change from
    its accuracy (points): the curves the HParams view reads its metrics from."""
    if "test_acc" not in metrics:
        return {}
    marks = {"test_best_acc": best_acc}
    if init_acc is not None:
        marks["test_vs_init"] = metrics["test_acc"] - init_acc
    return marks


# Discrete HParams domains of the settings that take few values (qnnrun.runs.log_hparams).
HPARAM_DOMAINS = {"bits_w": BITS_DOMAIN, "bits_a": BITS_DOMAIN, "method": sorted(METHODS),
                  "first_layer": list(LAYER_POLICIES), "last_layer": list(LAYER_POLICIES),
                  "precision": list(PRECISIONS)}


def _hparams(cfg: DictConfig, method: Method, info: DataInfo, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that tells runs apart, and the costs, as TensorBoard HParams columns."""
    init_from = Path(str(cfg.init_from)) if cfg.init_from else None
    short = "none" if init_from is None else (init_from.parent.name if init_from.suffix == ".ckpt" else init_from.name)
    return {"method": cfg.method.name, "bits_w": method.weight_bits, "bits_a": method.act_bits,
            "model": cfg.model.name, "dataset": info.name, "seed": cfg.seed, "epochs": cfg.trainer.epochs,
            "lr": float(cfg.optim.lr), "optimizer": str(cfg.optim.name),
            "first_layer": str(cfg.quant.first_layer), "last_layer": str(cfg.quant.last_layer),
            "init_from": short, "precision": str(cfg.trainer.precision), "gbops": summary["gbops"],
            "weight_mb": summary["weight_memory_mb"]}


def _summary(cfg: DictConfig, method: Method, info: DataInfo, history: list[dict[str, Any]], best_acc: float,
             cost: Mapping[str, float], init_acc: float | None) -> dict[str, Any]:
    last = history[-1]
    trained = [h for h in history if "epoch_time_s" in h]
    train_time = sum(h["epoch_time_s"] for h in trained)
    best = max((h for h in history if "test_acc" in h), key=lambda h: h["test_acc"])
    return {
        "status": "done",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": info.name,
        "bits_w": method.weight_bits,
        "bits_a": method.act_bits,
        "seed": cfg.seed,
        "epochs": cfg.trainer.epochs,
        "test_acc": last["test_acc"],
        "test_top5": last.get("test_top5"),
        "test_loss": last["test_loss"],
        "best_test_acc": max(best_acc, best["test_acc"]),
        "best_epoch": best["epoch"],
        "init_test_acc": init_acc,
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "gbops": cost["bops"] / 1e9,
        "gmacs": cost["macs"] / 1e9,
        "gbit_macs": cost["bit_macs"] / 1e9,
        "weight_memory_mb": cost["weight_memory_mb"],
        "compression": cost["compression"],
        "train_time_s": train_time,
        "compile_s": sum(h.get("compile_s", 0.0) for h in history),
        "images_per_s": (sum(h["images_per_s"] * h["epoch_time_s"] for h in trained) / train_time
                         if train_time else None),
    }
