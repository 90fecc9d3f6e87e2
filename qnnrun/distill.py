"""Knowledge distillation from a teacher net into the run being trained (``trainer.distill``)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.checkpoint import checkpoint_file, file_sha256
from qnnrun.data import DataInfo
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import load_saved_run

log = logging.getLogger("qnnrun")


class Distillation:
    """Knowledge distillation (Hinton et al., 2015) from a teacher net (``trainer.distill``): the term
    ``weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` over teacher logits ``t`` and student
    logits ``s`` of the same (augmented) batch, averaged over the batch. The teacher runs in eval mode
    without gradients; ``T^2`` keeps the gradient's scale independent of ``T``.

    Args:
        teacher: the teacher model (eval mode, on the student's device).
        weight: the term's weight (>= 0); temperature: ``T`` (> 0).
        sha256: the teacher checkpoint file's SHA-256 (hex), which identifies it in the records
            (``None``: a teacher not read from a file).
    """

    def __init__(self, teacher: nn.Module, weight: float, temperature: float, sha256: str | None = None) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature, self.sha256 = weight, temperature, sha256
        self.last = torch.zeros(())  # the last batch's term (detached), for the epoch's mean

    def __call__(self, images: Tensor, logits: Tensor) -> Tensor:
        """The term (0-d) for ``images`` [B, C, H, W] and the student's ``logits`` [B, classes]."""
        with torch.no_grad():
            target = F.log_softmax(self.teacher(images).float() / self.temperature, dim=1)
        student = F.log_softmax(logits / self.temperature, dim=1)
        term = F.kl_div(student, target, reduction="batchmean", log_target=True) * self.temperature**2
        self.last = term.detach()
        return self.weight * term


def check_teacher(cfg: DictConfig, started_with: str | None) -> None:
    """For a resume: refuse a ``trainer.distill.teacher`` file whose SHA-256 is not ``started_with``,
    the one its run started with (``None``: not recorded, or no teacher)."""
    distill = cfg.trainer.get("distill")
    if started_with is None or distill is None or distill.teacher is None:
        return
    sha256 = file_sha256(checkpoint_file(str(distill.teacher), "trainer.distill.teacher"))
    if sha256 != started_with:
        raise QnnrunError(f"trainer.distill.teacher={distill.teacher} is not the file this run started with "
                          f"(SHA-256 {started_with[:12]}... then, {sha256[:12]}... now): resuming would distil from "
                          f"another teacher; put that file back, or train a new run")


def distillation(cfg: DictConfig, info: DataInfo, device: torch.device) -> Distillation | None:
    """``trainer.distill``'s teacher (any qnnrun checkpoint) on ``device``, or ``None`` when off; a
    teacher for another data set's shape or classes is refused. The teacher takes the student's
    ``trainer.channels_last`` and ``trainer.compile``: compiled, a float ResNet-20 teacher's forward
    pass ran 2.8x faster on one CPU thread (it was more than half of each step's time eager)."""
    distill = cfg.trainer.get("distill")
    if distill is None or distill.teacher is None:
        return None
    sha256 = file_sha256(checkpoint_file(str(distill.teacher), "trainer.distill.teacher"))
    teacher = load_saved_run(str(distill.teacher), device)
    shape = (info.in_channels, info.image_size, info.num_classes)
    theirs = (teacher.info.in_channels, teacher.info.image_size, teacher.info.num_classes)
    if theirs != shape:
        raise QnnrunError(f"trainer.distill.teacher={distill.teacher} was trained on {teacher.info.name} "
                          f"(channels, size, classes {theirs}); this run's data is {shape}")
    if teacher.info.name != info.name:  # same shape: allowed, but the teacher sees this data's normalisation
        log.warning("trainer.distill.teacher=%s was trained on %s, this run trains on %s: the teacher sees this "
                    "data set's images, normalised as this data set is", distill.teacher, teacher.info.name, info.name)
    log.info("distilling from %s (%s, epoch %d): weight %g, temperature %g", distill.teacher,
             teacher.config.method.name, teacher.epoch, distill.weight, distill.temperature)
    model = teacher.model.to(memory_format=torch.channels_last) if cfg.trainer.channels_last else teacher.model
    model = torch.compile(model) if cfg.trainer.compile else model
    return Distillation(model, float(distill.weight), float(distill.temperature), sha256)
