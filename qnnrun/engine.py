"""The training loop: the epoch loop and the order of the method hooks, logging, checkpoints, signals.

One run writes into its folder (``run_dir``)::

    events.out.tfevents.*   TensorBoard: test/*, train/* (lr, train/quant/*), time/*, the costs (text), hparams
    last.ckpt, best.ckpt    checkpoints (atomic writes; ``resume=true`` continues from last.ckpt)
    bops.txt, bops.csv      per-layer BOPs / MACs / weight memory table
    summary.json            final metrics, costs, timing; ``"status": "done"`` once finished
    .hydra/, train.log      Hydra's resolved config and the log
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn
from tqdm import tqdm

from qnnrun import distributed
from qnnrun.build import (build_quantized_model, check_init_from, example_input, init_test_acc, seed_everything,
                          select_device)
from qnnrun.checkpoint import load_checkpoint, save_atomic, write_text_atomic
from qnnrun.config import validate_train, warn_unused_method_options
from qnnrun.data import build_data
from qnnrun.distill import Distillation, check_teacher, distillation
from qnnrun.errors import QnnrunError
# Imported into this namespace because the loop calls them from here (tests patch ``engine.evaluate``).
from qnnrun.evaluate import EvalResult, evaluate, reestimate_batchnorm
from qnnrun.methods import Method, build_method, warn_ignored_settings
from qnnrun.metrics.bops import format_table, layer_costs, layer_widths, totals
from qnnrun.quant.fold import folded_norms
from qnnrun.quant.layers import fully_quantized
from qnnrun.optim import build_optimizer, method_lr_factor
from qnnrun.runs import (BEST_CKPT, HPARAM_DOMAINS, LAST_CKPT, STEP_CURVES, SUMMARY, check_resume_config,
                         checkpoint_state, hparams_record, log_costs, log_epoch, log_hparams, log_step, prepare_run_dir,
                         lock_run_dir, refuse_existing_run, resolve_resume, retire_summary, summary_record)
from qnnrun.schema import absent_method_options
from qnnrun.stop import StopRequest, interrupted
from qnnrun.tally import EpochTally, set_rng_state

log = logging.getLogger("qnnrun")


def train_step(model: nn.Module, forward: nn.Module, method: Method, optimizer: torch.optim.Optimizer,
               criterion: nn.Module, images: Tensor, labels: Tensor, step: int,
               autocast: Any = nullcontext, grad_clip: float = 0.0, skip_nonfinite: bool = False,
               distill: Distillation | None = None) -> tuple[Tensor, Tensor]:
    """One optimizer step with the method's hooks around it.

    Args:
        model: the (quantized) model the method and optimizer act on.
        forward: what computes the logits: ``model`` itself or ``torch.compile(model)``.
        images: [B, C, H, W] float on the model's device; labels: [B] int64.
        step: global 0-based step number, passed to the method's hooks.
        skip_nonfinite: when the loss is NaN or infinite, leave the weights, buffers (running
            statistics) and optimizer untouched (a buffer copy and one host sync per step); the
            method's after-step hook still runs, so its per-step state (e.g. SQ's float rows) is reset.
        distill: adds the distillation term of the teacher's logits on ``images`` to the loss.

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
        if distill is not None:
            loss = loss + distill(images, logits.float())
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
    warn_ignored_settings(cfg, log)
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
                      rank_device or select_device(cfg.trainer.device, "trainer.device"), overrides)
    finally:
        distributed.finish(ranks)


def _train(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks, device: torch.device,
           overrides: Sequence[str]) -> dict[str, Any]:
    """One process's training: open the run folder, build, then epochs; the hooks' order is in :class:`_Loop`."""
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    start = _open_run(cfg, run_dir, ranks)
    try:
        loop = _Loop(cfg, start, ranks, device)
        with StopRequest() as stop:
            for epoch in range(loop.start_epoch, cfg.trainer.epochs):
                loop.train_epoch(epoch, stop)
                loop.end_epoch(epoch, stop)
        return loop.finish(overrides)
    finally:
        if start.lock is not None:  # released here, not whenever the handle is collected (sweeps run in one process)
            start.lock.close()


@dataclass
class _Start:
    """Where one training starts: its folder and, when it continues a run, the checkpoint it continues."""

    run_dir: Path
    config: dict[str, Any]  # what the checkpoints store (_stored_config)
    resume_from: Path | None = None
    checkpoint: dict[str, Any] | None = None
    extensions: list[dict[str, int]] = field(default_factory=list)  # extend=true steps, oldest first
    lock: Any = None  # rank 0's lock on run_dir (qnnrun.runs.lock_run_dir), held while the run trains


def _open_run(cfg: DictConfig, run_dir: Path, ranks: distributed.Ranks) -> _Start:
    """Resolve ``resume``, refuse a folder that holds another run, prepare the folder (rank 0), check
    a resumed run's config against its checkpoint (``extend=true`` notes the longer run), and lock the
    folder for this training (rank 0; only then is anything in it changed)."""
    resume_from, run_dir = resolve_resume(cfg.resume, run_dir)
    if ranks.main:
        if resume_from is None:
            refuse_existing_run(run_dir)
        prepare_run_dir(run_dir)
    start = _Start(run_dir, _stored_config(cfg), resume_from)
    if resume_from is not None:
        _check_resume(cfg, start)
    if ranks.main:
        start.lock = lock_run_dir(run_dir)
        if resume_from is not None:
            retire_summary(run_dir)
    return start


def _stored_config(cfg: DictConfig) -> dict[str, Any]:
    """The config a run's checkpoints store: ``cfg`` resolved, with its ``paths`` made absolute (a
    ``paths.data_dir=data`` typed in one folder names the same data when the run is read from another:
    eval, export and sensitivity read a run's data from its own folder). ``paths`` may differ on a
    resume (:data:`~qnnrun.runs.FREE_KEYS`)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    paths = config.get("paths") or {}
    for key, value in paths.items():
        if isinstance(value, str):
            paths[key] = str(Path(value).expanduser().absolute())
    return config


def _check_resume(cfg: DictConfig, start: _Start) -> None:
    """Load the checkpoint ``start`` resumes and check that ``cfg`` continues its run (``extend=true``
    noted in ``start.extensions``)."""
    resume_from = start.resume_from
    start.checkpoint = checkpoint = load_checkpoint(resume_from)
    absent = absent_method_options(checkpoint["config"])
    if absent:  # the run goes on as the version that wrote it ran, not with today's defaults
        with open_dict(cfg):
            cfg.method.update(absent)
        start.config = _stored_config(cfg)
    check_resume_config(checkpoint["config"], start.config, resume_from, extend=cfg.get("extend") is True)
    check_teacher(cfg, checkpoint.get("teacher_sha256"))
    start.extensions = list(checkpoint.get("extensions", []))
    epochs_before = checkpoint["config"]["trainer"]["epochs"]
    if epochs_before != cfg.trainer.epochs:  # extend=true: checked above
        schedule = build_method(cfg).epoch_schedule
        if schedule:
            raise QnnrunError(f"cannot extend {resume_from}: method={cfg.method.name} lays {schedule} over the "
                              f"run's {epochs_before} epochs, and extend=true would lay it out again over "
                              f"{cfg.trainer.epochs}; train a new run with trainer.epochs={cfg.trainer.epochs}")
        start.extensions.append({"at_epoch": int(checkpoint["epoch"]), "epochs_before": int(epochs_before),
                                 "epochs": int(cfg.trainer.epochs)})
        log.info("extending %s from %d to %d epochs at epoch %d", resume_from, epochs_before,
                 cfg.trainer.epochs, checkpoint["epoch"])


class _Loop:
    """One training's objects and progress, and its phases in order: build (:meth:`__init__`), then per
    epoch :meth:`train_epoch` and :meth:`end_epoch`, then :meth:`finish`.

    The method's hooks run in this order: ``plan``, ``set_calibration_source``, then ``prepare`` (a
    fresh run) or ``load_state_dict`` + ``restore_model`` (a resume); per epoch ``on_epoch_start``,
    per step ``before_step`` / ``regularization`` / ``after_optimizer_step`` (:func:`train_step`),
    ``scalars`` after each epoch.
    """

    def __init__(self, cfg: DictConfig, start: _Start, ranks: distributed.Ranks, device: torch.device) -> None:
        self.cfg, self.start, self.ranks, self.device = cfg, start, ranks, device
        self.run_dir = start.run_dir
        self._build()
        self._restore()
        self._write_costs()
        self._prepare_forward()
        self._open_writers()

    def _build(self) -> None:
        """Data, model, method, optimizer and schedule from the config."""
        cfg, device = self.cfg, self.device
        init_from = None if self.start.checkpoint is not None else cfg.init_from
        if init_from:
            check_init_from(init_from)
        self.data = build_data(cfg.dataset, data_dir=cfg.paths.data_dir, cache_dir=cfg.paths.cache_dir,
                               device=device, seed=cfg.seed)
        if self.ranks.active:  # every rank draws the same global batches and trains on its share
            self.data.train.shard(self.ranks.rank, self.ranks.world)
            self.data.test.shard(self.ranks.rank, self.ranks.world)
        self.info = self.data.info
        resumed = self.start.checkpoint
        model, self.method = build_quantized_model(
            cfg, self.info, device, init_from, like=None if resumed is None else resumed["model"],
            folded=None if resumed is None else resumed.get("folded_at_build", []))
        # BatchNorms folded before the optimizer exists (taken from a folded init_from, quant.fold_bn): a
        # resume folds them again before it builds the optimizer, whose parameters then match the saved ones.
        self.folded_at_build = folded_norms(model)
        self.model = model.to(memory_format=torch.channels_last) if cfg.trainer.channels_last else model
        self.costs = layer_costs(self.model, example_input(self.info, device, 1))
        self.cost = totals(self.costs)
        self.optimizer = build_optimizer(cfg.optim, self.method.param_groups(self.model, cfg.optim.weight_decay))
        self.steps_per_epoch = steps = len(self.data.train)
        self.method.plan(cfg.trainer.epochs, steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: method_lr_factor(cfg.sched, self.method, step, steps))
        self.method.set_calibration_source(lambda: self._calibration_images())
        self.init_acc = init_test_acc(cfg.init_from)  # what test/vs_init is measured from
        self.distill = distillation(cfg, self.info, device)

    @property
    def teacher_sha256(self) -> str | None:
        """The distillation teacher file's SHA-256 (hex), for the records; ``None`` without a teacher."""
        return None if self.distill is None else self.distill.sha256

    def _calibration_images(self) -> Iterator[Tensor]:
        return (images for images, _ in itertools.islice(self.data.train, self.cfg.quant.calib_batches))

    def _restore(self) -> None:
        """A resume loads the checkpoint (a mid-epoch one also its partial epoch); a fresh run calibrates."""
        self.start_epoch, self.best_acc, self.history = 0, -1.0, []
        self.partial: dict[str, Any] | None = None
        checkpoint = self.start.checkpoint
        if checkpoint is None:
            self.method.prepare(self.model, self._calibration_images())
            self.step = 0
            return
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.method.load_state_dict(checkpoint["method"])
        self.method.restore_model(self.model)
        self.start_epoch, self.best_acc = checkpoint["epoch"], checkpoint["best_acc"]
        self.history = checkpoint["history"]
        log.info("resuming %s at epoch %d of %d", self.start.resume_from, self.start_epoch, self.cfg.trainer.epochs)
        self.partial = checkpoint.get("partial")
        if self.partial is not None and self.partial["steps_per_epoch"] != self.steps_per_epoch:
            raise QnnrunError(f"cannot resume {self.start.resume_from} mid-epoch: it was saved with "
                              f"{self.partial['steps_per_epoch']} batches per epoch, this run has "
                              f"{self.steps_per_epoch} (same dataset.batch_size needed)")
        self.step = self.start_epoch * self.steps_per_epoch

    def _write_costs(self) -> None:
        """bops.txt and bops.csv (rank 0) and the run's one-line description in the log."""
        cost, method, cfg = self.cost, self.method, self.cfg
        if self.ranks.main:
            write_text_atomic(self.run_dir / "bops.txt", format_table(self.costs, cost) + "\n")
            table = io.StringIO()
            rows = [c.row() for c in self.costs]
            writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["name"])
            writer.writeheader()
            writer.writerows(rows)
            write_text_atomic(self.run_dir / "bops.csv", table.getvalue())
        smaller = f" ({cost['compression']:.1f}x smaller than FP32)" if method.quantizes else " (float)"
        log.info("%s %s %s on %s (%s): %.4f GBOPs/image, %.3f MiB weights%s", cfg.method.name, cfg.model.name,
                 method.bits_label, self.info.name, self.device, cost["bops"] / 1e9, cost["weight_memory_mb"], smaller)

    def _prepare_forward(self) -> None:
        """What computes the logits: the model, compiled (``trainer.compile``) and wrapped in DDP (ranks)."""
        cfg, data = self.cfg, self.data
        if cfg.trainer.compile:
            allow_recompiles(64)
            if data.train.num_samples % data.train.batch_size and not cfg.dataset.drop_last:
                log.info("trainer.compile: the last batch of each epoch is short (%d samples); dataset.drop_last=true "
                         "saves its extra compilation", data.train.num_samples % data.train.batch_size)
        self.compiled = torch.compile(self.model) if cfg.trainer.compile else self.model  # evaluation, one rank
        self.forward = self.compiled
        if self.ranks.active:  # after prepare/resume: DDP starts every rank from rank 0's weights and buffers
            forward = distributed.wrap(self.model, self.ranks, self.device, self.method.static_parameters)
            self.forward = torch.compile(forward) if cfg.trainer.compile else forward
        self.criterion = self.method.criterion(cfg.trainer.label_smoothing)
        self.warming_up = bool(cfg.trainer.compile)  # the first step compiles: timed apart from the epoch
        self.skip_nonfinite = cfg.trainer.on_nan == "skip_batch"

    def _open_writers(self) -> None:
        """TensorBoard writers (rank 0): epoch curves in the run folder, step curves in its own sub-folder.

        A resume purges the epoch curves from an epoch number, the step curves from a step number."""
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import

        self.writer = self.step_writer = None
        self.log_every = int(self.cfg.trainer.log_every_steps)
        if not self.ranks.main:
            return
        self.writer = SummaryWriter(str(self.run_dir), purge_step=self.start_epoch + 1 if self.start_epoch else None)
        if self.start.checkpoint is None:
            log_costs(self.writer, self.cost)
        resumed_at = self.step + (self.partial["batches"] if self.partial is not None else 0)
        if self.log_every:
            self.step_writer = SummaryWriter(str(self.run_dir / STEP_CURVES),
                                             purge_step=resumed_at + 1 if resumed_at else None)

    def autocast(self) -> Any:
        """bf16 autocast when ``trainer.precision=bf16``, else a context that does nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.trainer.precision == "bf16")

    def evaluate_test(self) -> EvalResult:
        """Test-set evaluation, after re-estimating BatchNorm (rank 0's for every rank) when asked to."""
        cfg = self.cfg
        bn_batches = int(cfg.quant.bn_reestimate_batches)
        if bn_batches:
            reestimate_batchnorm(self.model, itertools.islice(self.data.train, bn_batches), self.autocast,
                                 cfg.trainer.channels_last)
            distributed.sync_buffers(self.model, self.ranks)
        return evaluate(self.compiled, self.data.test, self.info.num_classes, self.autocast, cfg.trainer.channels_last)

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return checkpoint_state(self.start.config, epoch, self.model, self.optimizer, self.scheduler, self.method,
                      self.best_acc, self.history, self.info, self.start.extensions, self.folded_at_build,
                      self.teacher_sha256)

    def _save(self, state: dict[str, Any], name: str) -> None:
        if self.ranks.main:  # other ranks write no files
            save_atomic(state, self.run_dir / name)

    def _save_checkpoints(self, epochs_done: int, improved: bool) -> None:
        """``last.ckpt`` after ``epochs_done`` epochs, and ``best.ckpt`` when its evaluation ``improved``."""
        state = self._checkpoint(epochs_done)
        self._save(state, LAST_CKPT)
        if improved:
            self._save(state, BEST_CKPT)

    def _epoch_batches(self, epoch: int, tally: EpochTally) -> Iterator[Any]:
        """The epoch's batches; resuming mid-epoch, those after where it stopped (the rest replayed)."""
        batches = iter(self.data.train)
        partial, self.partial = self.partial, None
        if partial is not None:
            for _ in range(partial["batches"]):
                next(batches)
            tally.restore(partial, self.ranks)
            tally.start = time.perf_counter()  # reading the replayed batches again is not training time
            self.method.load_state_dict(self.start.checkpoint["method"])  # after on_epoch_start rebuilt it
            set_rng_state(partial["rng"])
            self.step += partial["batches"]
            log.info("resuming epoch %d at batch %d of %d", epoch + 1, partial["batches"], self.steps_per_epoch)
        return batches

    def train_epoch(self, epoch: int, stop: StopRequest) -> None:
        """Train one epoch; on a stop request mid-epoch, write a mid-epoch checkpoint and raise Interrupted."""
        cfg, epochs = self.cfg, self.cfg.trainer.epochs
        # Per-epoch seeds make an epoch's randomness (order, augmentation, dropout, noise) the same
        # whether the run was interrupted before it or not.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        self.data.train.set_epoch(epoch)
        self.method.on_epoch_start(self.model, epoch, epochs)
        self.model.train()
        self.tally = tally = EpochTally(self.device)
        batches = self._epoch_batches(epoch, tally)
        progress = _Progress(batches, self.steps_per_epoch, cfg.trainer.progress and self.ranks.main,
                             f"epoch {epoch + 1}/{epochs}", initial=tally.batches)
        for images, labels in progress:
            self._step(images, labels)
            due = self.step % 10 == 0 or tally.batches == self.steps_per_epoch
            if self.ranks.active:  # the ranks agree on stopping every 10 steps (a collective)
                stopping = due and distributed.any_rank(stop.signum is not None, self.device, self.ranks)
            else:
                stopping = stop.signum is not None
            if due or stopping:
                tally.check_finite(epoch, self.steps_per_epoch, cfg, self.run_dir, self.ranks)
                if progress.bar is not None and tally.seen:
                    progress.show(loss=tally.loss_sum.item() / tally.seen,
                                  acc=100.0 * tally.correct.item() / tally.seen)
            if stopping and tally.batches < self.steps_per_epoch:
                progress.close()
                state = self._checkpoint(epoch)
                state["partial"] = tally.state(self.steps_per_epoch, self.ranks)
                self._save(state, LAST_CKPT)
                raise interrupted(stop.signum or signal.SIGTERM, self.run_dir,
                                   f"epoch {epoch + 1}, batch {tally.batches} of {self.steps_per_epoch}")
        progress.close()

    def _step(self, images: Tensor, labels: Tensor) -> None:
        """One optimizer step (:func:`train_step`), the schedule's step and the step's bookkeeping."""
        cfg = self.cfg
        if cfg.trainer.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.warming_up:
            _synchronize(self.device)
            compile_start = time.perf_counter()
        loss, logits = train_step(self.model, self.forward, self.method, self.optimizer, self.criterion, images,
                                  labels, self.step, self.autocast, cfg.trainer.grad_clip, self.skip_nonfinite,
                                  self.distill)
        if self.warming_up:
            _synchronize(self.device)
            self.tally.compile_s = time.perf_counter() - compile_start
            log.info("torch.compile warm-up (first step): %.1f s, left out of the epoch's time", self.tally.compile_s)
            self.warming_up = False
        distributed.sync_buffers(self.model, self.ranks)
        if self.step == 0:  # quantizers started from the first batch saw each rank's share of it
            distributed.sync_parameters(self.model, self.ranks)
        self.scheduler.step()
        self.tally.add(loss, logits, labels, self.step, self.skip_nonfinite,
                       self.distill.last if self.distill is not None else None)
        self.step += 1
        if self.step_writer is not None and self.step % self.log_every == 0:
            log_step(self.step_writer, self.step, loss, self.optimizer.param_groups[0]["lr"],
                     self.method.scalars(self.model))

    def end_epoch(self, epoch: int, stop: StopRequest) -> None:
        """The epoch's metrics, evaluation, curves, checkpoints and log line; then honour a stop request."""
        cfg, epochs, tally = self.cfg, self.cfg.trainer.epochs, self.tally
        _synchronize(self.device)
        tally.check_finite(epoch, self.steps_per_epoch, cfg, self.run_dir, self.ranks)
        distributed.check_agreement(self.model, self.ranks, self.device)
        metrics = tally.metrics(epoch, self.optimizer.param_groups[0]["lr"], self.ranks, self.distill is not None)
        if metrics["train_samples"] == 0:
            raise QnnrunError(f"every batch of epoch {epoch + 1} had a non-finite loss and was skipped "
                              f"(trainer.on_nan=skip_batch): the weights have diverged; start a new run at a lower "
                              f"optim.lr (now {cfg.optim.lr}), from scratch or with init_from= a checkpoint "
                              f"before the divergence (a resume continues the same run, at the same rate)")
        if (epoch + 1) % cfg.trainer.eval_every == 0 or epoch + 1 == epochs:
            result = self.evaluate_test()
            metrics.update(test_loss=result.loss, test_acc=result.acc)
            if result.top5 is not None:
                metrics["test_top5"] = result.top5
        metrics.update({f"quant/{k}": v for k, v in self.method.scalars(self.model).items()})
        # Best only among evaluations of the whole quantized network, never a partly float one.
        metrics["quantized"] = fully_quantized(self.model)
        improved = metrics["quantized"] and metrics.get("test_acc", -1.0) > self.best_acc
        if improved:
            self.best_acc = metrics["test_acc"]
        metrics.update(_accuracy_marks(metrics, self.best_acc, self.init_acc))
        self.history.append(metrics)
        if self.writer is not None:
            log_epoch(self.writer, metrics)
        self._save_checkpoints(epoch + 1, improved)
        skipped = f"  ({tally.skipped} non-finite batches skipped)" if tally.skipped else ""
        log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %s  %.1fs (%.0f img/s)%s", epoch + 1, epochs,
                 metrics["train_loss"], metrics["train_acc"],
                 f"{metrics['test_acc']:.2f}%" if "test_acc" in metrics else "-", metrics["epoch_time_s"],
                 metrics["images_per_s"], skipped)
        if epoch + 1 < epochs and distributed.any_rank(stop.signum is not None, self.device, self.ranks):
            raise interrupted(stop.signum or signal.SIGTERM, self.run_dir, f"the end of epoch {epoch + 1}")

    def finish(self, overrides: Sequence[str]) -> dict[str, Any]:
        """Evaluate a run that ended without (``epochs=0``), then the summary, HParams and the last log line.
        A run of 0 epochs saves its checkpoints too: the model as built and calibrated (from ``init_from``:
        post-training quantization), for ``qnnrun eval``/``export`` and a longer run (``extend=true``)."""
        cfg, history = self.cfg, self.history
        if not history or "test_acc" not in history[-1]:  # epochs=0: evaluate the starting point
            result = self.evaluate_test()
            entry = {"epoch": cfg.trainer.epochs, "test_loss": result.loss, "test_acc": result.acc,
                     "quantized": fully_quantized(self.model),
                     **({"test_top5": result.top5} if result.top5 is not None else {})}
            improved = entry["quantized"] and result.acc > self.best_acc
            if improved:  # kept in the checkpoint: a longer run (extend=true) replaces best.ckpt only when better
                self.best_acc = result.acc
            entry.update(_accuracy_marks(entry, self.best_acc, self.init_acc))
            history.append(entry)
            if self.writer is not None:
                log_epoch(self.writer, entry)
            self._save_checkpoints(0, improved)
        summary = summary_record(cfg, self.method, self.info, history, self.best_acc, self.cost, self.init_acc,
                                 layer_widths(self.costs), self.teacher_sha256)
        summary.update(extensions=self.start.extensions, overrides=list(overrides),
                       run_dir=str(self.run_dir.resolve()))
        if self.writer is not None:
            log_hparams(self.writer, hparams_record(cfg, self.method, self.info, summary), HPARAM_DOMAINS)
            self.writer.close()
            if self.step_writer is not None:
                self.step_writer.close()
            write_text_atomic(self.run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        change = None if summary["init_test_acc"] is None else summary["test_acc"] - summary["init_test_acc"]
        since = "" if change is None else f"; {change:+.2f} from init_from's {summary['init_test_acc']:.2f}%"
        best = "none fully quantized" if summary["best_test_acc"] is None else f"{summary['best_test_acc']:.2f}%"
        log.info("done: test accuracy %.2f%% (best %s%s), results in %s", summary["test_acc"], best, since,
                 self.run_dir)
        return summary


def allow_recompiles(limit: int) -> None:
    """Let dynamo recompile a frame up to ``limit`` times (never lowering a higher limit): methods whose
    layer states change during the run (UNIQ stages, NBN/FBF/LBL progressions: about 36 changes on
    ResNet-20) recompile at each change, and past dynamo's default of 8 the model would silently run
    eagerly. The limit on a frame's recompiles in all (``accumulated_recompile_limit``) is raised alike."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7 name
    setattr(config, name, max(getattr(config, name), limit))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, limit)


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finite_everywhere(loss: Tensor) -> bool:
    """True when ``loss`` (0-d) is finite on this process and, when distributed, on every rank."""
    finite = torch.isfinite(loss.detach()).double().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _accuracy_marks(metrics: Mapping[str, Any], best_acc: float, init_acc: float | None) -> dict[str, float]:
    """An evaluated epoch's best test accuracy so far and, from an ``init_from`` net, the change from
    its accuracy (points): the curves the HParams view reads its metrics from."""
    if "test_acc" not in metrics:
        return {}
    marks = {"test_best_acc": best_acc} if best_acc >= 0 else {}  # none yet: no fully quantized evaluation
    if init_acc is not None:
        marks["test_vs_init"] = metrics["test_acc"] - init_acc
    return marks
