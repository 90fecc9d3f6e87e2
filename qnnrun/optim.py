"""Optimizers beyond ``torch.optim``: BinaryNet's shift-based AdaMax."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

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
