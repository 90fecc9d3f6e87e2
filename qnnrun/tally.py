"""One epoch's running training metrics, kept on the device, and what a mid-epoch checkpoint needs
to finish the epoch as if it had never stopped."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import Tensor

from qnnrun import distributed
from qnnrun.errors import QnnrunError
from qnnrun.runs import LAST_CKPT


class EpochTally:
    """Running train metrics of one epoch, kept on the device (no host sync per step).

    Non-finite losses are noted with their global step; ``check_finite`` (called every few steps)
    turns them into the divergence error. With ``skip`` the caller already synced on the loss, and
    skipped batches are only counted.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.distill_sum = torch.zeros((), device=device, dtype=torch.float64)  # trainer.distill's term
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

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor, step: int, skip: bool,
            distill: Tensor | None = None) -> None:
        """Count one batch; with ``skip``, a NaN ``loss`` is :func:`qnnrun.engine.train_step`'s mark of a skipped step.
        ``distill``: the batch's distillation term (0-d), part of ``loss``."""
        self.batches += 1
        if skip and not bool(torch.isfinite(loss)):
            self.skipped += 1
            return
        if not skip:
            self.first_bad = torch.where(~torch.isfinite(loss) & (self.first_bad < 0), step, self.first_bad)
        self.loss_sum += loss.double() * labels.numel()
        if distill is not None:
            self.distill_sum += distill.double() * labels.numel()
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

    def totals(self, ranks: distributed.Ranks) -> tuple[float, int, int, float]:
        """(loss sum, correct, samples, distillation-term sum) of this epoch so far, summed over ranks."""
        values = torch.stack([self.loss_sum, self.correct.double(),
                              torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64),
                              self.distill_sum])
        loss_sum, correct, seen, distill_sum = distributed.sum_over_ranks(values, ranks).tolist()
        return loss_sum, int(correct), int(seen), distill_sum

    def metrics(self, epoch: int, lr: float, ranks: distributed.Ranks, distilling: bool = False) -> dict[str, Any]:
        """The epoch's train metrics over all ranks (every rank must call this); ``distilling`` adds
        the mean distillation term (``train_distill``)."""
        loss_sum, correct, seen, distill_sum = self.totals(ranks)
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
        if distilling:
            metrics["train_distill"] = distill_sum / max(1, seen)
        if self.skipped:
            metrics["skipped_batches"] = self.skipped
        if self.compile_s:
            metrics["compile_s"] = self.compile_s
        return metrics

    def state(self, steps_per_epoch: int, ranks: distributed.Ranks) -> dict[str, Any]:
        """What a mid-epoch checkpoint needs to finish this epoch as if never stopped (sums over ranks)."""
        loss_sum, correct, seen, distill_sum = self.totals(ranks)
        return {"batches": self.batches, "steps_per_epoch": steps_per_epoch, "loss_sum": loss_sum,
                "correct": correct, "seen": seen, "skipped": self.skipped, "distill_sum": distill_sum,
                "elapsed_s": self.seconds(), "rng": rng_state()}

    def restore(self, state: Mapping[str, Any], ranks: distributed.Ranks) -> None:
        """Continue from :meth:`state`; the sums over ranks go to rank 0, so they are counted once."""
        if ranks.main:
            self.loss_sum.fill_(state["loss_sum"])
            self.distill_sum.fill_(state.get("distill_sum", 0.0))  # absent in checkpoints before distillation
            self.correct.fill_(state["correct"])
            self.seen = state["seen"]
        self.batches, self.skipped = state["batches"], state["skipped"]
        self.elapsed = state["elapsed_s"]


def rng_state() -> dict[str, Any]:
    """The global torch RNG states: CPU, and the current CUDA device's when CUDA is in use."""
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
