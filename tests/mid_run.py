"""A method's training step in the middle of a run, built the way ``qnnrun.engine.train`` builds it,
for tests that check one ordinary step of every method (host syncs, bf16 autocast)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar

import torch
from hydra_utils import compose_config
from torch import Tensor, nn

from qnnrun.build import build_quantized_model
from qnnrun.data import dataset_info
from qnnrun.engine import train_step
from qnnrun.optim import build_optimizer


class MidRun:
    """``method`` on a small MLP over digits-shaped random batches [16, 1, 8, 8], at epoch 7 of a
    10-epoch run of 8 steps per epoch: past every method's first stages (UNIQ: the last block
    noisy; the progressive methods mid-way), after one step that makes the first observations."""

    epochs: ClassVar[int] = 10
    steps_per_epoch: ClassVar[int] = 8
    epoch: ClassVar[int] = 7

    def __init__(self, method: str, *overrides: str,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        cfg = compose_config(["model=mlp", "dataset=digits", f"method={method}", "bits=2", "model.widths=[32,32]",
                              *overrides])
        info = dataset_info(cfg.dataset)
        torch.manual_seed(0)
        self.model, self.method = build_quantized_model(cfg, info, torch.device("cpu"))
        self.images = torch.randn(16, info.in_channels, info.image_size, info.image_size)
        self.labels = torch.randint(0, info.num_classes, (16,))
        self.autocast = autocast
        self.method.plan(self.epochs, self.steps_per_epoch)
        self.method.set_calibration_source(lambda: iter([self.images]))
        self.method.prepare(self.model, iter([self.images]))
        self.method.on_epoch_start(self.model, self.epoch, self.epochs)
        self.model.train()
        self.optimizer = build_optimizer(cfg.optim, self.method.param_groups(self.model, cfg.optim.weight_decay))
        self.criterion: nn.Module = self.method.criterion(0.0)
        self.step = self.epoch * self.steps_per_epoch
        self.built_dtypes = self.dtypes()
        self.train_step()  # the first observations (activation ranges, thresholds) may sync

    def dtypes(self) -> dict[str, torch.dtype]:
        """The dtype of every parameter and buffer of the model, by name."""
        return {name: t.dtype for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]}

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns the loss (0-d) and the logits [16, 10], as the engine's step."""
        loss, logits = train_step(self.model, self.model, self.method, self.optimizer, self.criterion, self.images,
                                  self.labels, self.step, self.autocast)
        self.step += 1
        return loss, logits
