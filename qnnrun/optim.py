"""Optimizers and learning-rate schedules: the ``optim`` group's optimizers (BinaryNet's shift-based
AdaMax among them) and the ``sched`` group's per-step schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from qnnrun.errors import QnnrunError
from qnnrun.methods import Method
from qnnrun.quant.functional import power_of_two


class ShiftAdaMax(torch.optim.Optimizer):
    """Shift-based AdaMax (Courbariaux, Hubara et al., BinaryNet 2016, Algorithm 4).

    AdaMax with its two multiplications replaced by shifts, i.e. by multiplications with the
    nearest power of two ``AP2(z) = sign(z) * 2^round(log2|z|)``::

        m_t = beta1 * m + (1 - beta1) * g
        v_t = max(beta2 * v, |g|)
        theta -= (lr * AP2(1 / (1 - beta1^t))) * (m_t * AP2(1 / (v_t + eps)))

    Args:
        params: parameters or parameter groups.
        lr: learning rate (a group's ``lr`` wins).
        betas: ``(beta1, beta2)`` as in AdaMax.
        eps: added to ``v_t`` before inverting (no division by zero for never-updated entries).
        weight_decay: L2 penalty added to the gradient.
    """

    def __init__(self, params: Iterable[Any], lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid ShiftAdaMax settings lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_inf"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
                exp_avg.lerp_(grad, 1 - beta1)
                torch.maximum(exp_inf.mul_(beta2), grad.abs(), out=exp_inf)
                bias_correction = power_of_two(torch.tensor(1.0 / (1 - beta1 ** state["step"]))).item()
                param.sub_(exp_avg * power_of_two((exp_inf + group["eps"]).reciprocal()),
                           alpha=group["lr"] * bias_correction)
        return loss


# The optimizers of conf/optim by name: (optim config, parameter groups) -> optimizer. torch's own
# run fused (one kernel per step over all of a group's parameters, on the CPU as on CUDA): the same
# update as their for-loop form (within float rounding: most of SGD's tensors bit for bit), and on a large
# layer several times faster, since the per-element passes over the weights cost more than the
# matrix products there (docs/speed.md). A checkpoint resumes with the form it was saved with.
OPTIMIZERS: dict[str, Callable[[DictConfig, list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "sgd": lambda cfg, groups: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                               nesterov=cfg.nesterov and cfg.momentum > 0, fused=True),
    "adam": lambda cfg, groups: torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True),
    "adamw": lambda cfg, groups: torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True),
    "shift_adamax": lambda cfg, groups: ShiftAdaMax(groups, lr=cfg.lr, betas=tuple(cfg.betas)),
}


def build_optimizer(cfg: DictConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` (the ``optim`` group) over parameter ``groups`` (``Method.param_groups``)."""
    if cfg.name not in OPTIMIZERS:
        raise QnnrunError(f"unknown optimizer '{cfg.name}': valid are {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.name](cfg, groups)


def _cosine(cfg: DictConfig, step: int, warmup: int, steps_per_epoch: int, epochs: int) -> float:
    progress = min(1.0, (step - warmup) / max(1, steps_per_epoch * epochs - warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _step(cfg: DictConfig, step: int, warmup: int, steps_per_epoch: int, epochs: int) -> float:
    epoch = step // max(1, steps_per_epoch)
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


def _exp(cfg: DictConfig, step: int, warmup: int, steps_per_epoch: int, epochs: int) -> float:
    epoch = (step - warmup) // max(1, steps_per_epoch)
    return cfg.final_lr_ratio ** (epoch / max(1, epochs))


# The schedules of conf/sched by name: (sched config, step, warmup steps, steps per epoch, epochs) ->
# the learning-rate multiplier after the warm-up.
SCHEDULES: dict[str, Callable[[DictConfig, int, int, int, int], float]] = {
    "constant": lambda cfg, step, warmup, steps_per_epoch, epochs: 1.0,
    "cosine": _cosine,
    "step": _step,
    "exp": _exp,
}


def lr_factor(cfg: DictConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning-rate multiplier at global ``step`` for the ``sched`` group ``cfg`` (per-step schedules):
    a linear warm-up over ``sched.warmup_epochs``, then the schedule's own factor."""
    if cfg.name not in SCHEDULES:
        raise QnnrunError(f"unknown schedule '{cfg.name}': valid are {', '.join(SCHEDULES)}")
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    return SCHEDULES[cfg.name](cfg, step, warmup, steps_per_epoch, epochs)


def method_lr_factor(cfg: DictConfig, method: Method, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at global ``step``: the ``sched`` group ``cfg`` over the method's
    training run (:meth:`Method.schedule_span`, after :meth:`Method.plan`) times its ``lr_scale``."""
    run_step, run_epochs = method.schedule_span(step)
    return lr_factor(cfg, run_step, steps_per_epoch, run_epochs) * method.lr_scale(step)
