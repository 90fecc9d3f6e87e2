"""Quantizers with learned ranges: PACT's clipping level and LSQ's step (and LSQ+'s offset)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.quant import calibrate as C
from qnnrun.quant import functional as Q
from qnnrun.quant.calibrate import SquaredErrorSearch
from qnnrun.quant.grids import InputGrid, RoundGrid, SignGrid, WeightGrid, per_row
from qnnrun.quant.quantizers import SIGN_LEVELS, Quantizer, resolved_sign


class PactQuantizer(Quantizer):
    """PACT activation quantizer with a learned clipping level ``alpha`` (0-d ``nn.Parameter``, or a
    buffer held fixed with ``learned=False``), :func:`qnnrun.quant.functional.pact_quantize`.

    Args:
        bits: 1 to 8 (2 to 8 for an input with negative values).
        alpha_init: starting clipping level (> 0, units of the input), or ``"mse"``: the level with
            the least squared quantization error, found over all calibration batches (see
            ``Method.prepare``), else on the first training input; an evaluation before that
            searches on each input and stores nothing. A fixed level is meant for ReLU outputs
            (PACT's 10, DoReFa's 1): the image input (``image_input``, set by ``convert``) starts
            instead at its largest ``|x|``, found the same way, so that its codes span the values it
            takes (at 10, 8 bits would give a normalised CIFAR-10 image about 53 levels).
        learned: ``False`` holds ``alpha`` as a buffer at its start, never trained: DoReFa's input
            quantizer ``quantize_k(clamp(x, 0, 1))`` on ``[0, alpha]`` (DoReFa's ``method.act_clip``).

    The sign is detected like :class:`UniformQuantizer`'s: signed once a calibration batch (or,
    without calibration, the first input) holds a negative value.
    """

    def __init__(self, bits: int, alpha_init: float | str = 10.0, learned: bool = True) -> None:
        super().__init__()
        if alpha_init != "mse" and not (isinstance(alpha_init, (int, float)) and alpha_init > 0):
            raise ValueError(f"alpha_init={alpha_init!r}: a level > 0 or 'mse'")
        self.bits = bits
        self.init = "mse" if alpha_init == "mse" else "fixed"
        alpha = torch.tensor(1.0 if alpha_init == "mse" else float(alpha_init))
        if learned:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)
        self.signed: bool | None = None
        self.initialized = False  # alpha holds its start: searched (mse), or the image input's largest |x|
        self._search: tuple[C.SquaredErrorSearch, bool] | None = None  # MSE start over calibration, its sign
        self._peak: Tensor | None = None  # largest |x| over the calibration batches so far (0-d)

    def reset(self) -> None:
        """Forget the detected sign (and a start found from data) before a new calibration."""
        self.signed = None
        self._search = None
        self._peak = None
        self.initialized = False

    def _least_error_alpha(self, x: Tensor, signed: bool) -> Tensor:
        """The searched level (0-d) after folding ``x`` into the search (kept while calibrating)."""
        qmax = Q.code_range(self.bits, signed)[1]  # Qp: 2^k - 1, or 2^(k-1) - 1 signed
        rows = x.reshape(1, -1)
        if not self.calibrating or self._search is None or self._search[1] != signed:
            reference = (2 * rows.detach().float().abs().mean(1) * qmax**0.5).clamp_min(1e-8)
            self._search = (C.SquaredErrorSearch(reference), signed)
        alpha = self._search[0].add(rows, lambda v, a: Q.pact_quantize(v, a.reshape(()), self.bits, signed))
        if not self.calibrating:
            self._search = None
        return alpha.reshape(())

    def _largest_magnitude(self, x: Tensor) -> Tensor:
        """The largest ``|x|`` (0-d) over the calibration batches so far, ``x`` included."""
        peak = x.detach().abs().amax().float()
        if self.calibrating:
            self._peak = peak if self._peak is None else torch.maximum(self._peak, peak)
            return self._peak
        return peak

    def forward(self, x: Tensor) -> Tensor:
        signed = self.signed
        learning = self.calibrating or self.training  # an evaluation before calibration stores nothing
        if signed is None or (self.calibrating and not signed):
            signed = bool((x.detach().amin() < 0).item())
            if learning:
                self.signed = signed
        alpha = self.alpha
        if self.calibrating or not self.initialized:
            with torch.no_grad():
                if self.init == "mse":
                    found = self._least_error_alpha(x, signed)
                else:
                    found = self._largest_magnitude(x).clamp_min(1e-8) if self.image_input else None
                if found is not None and learning:
                    self.alpha.copy_(found)
                elif found is not None:
                    alpha = found
                self.initialized = self.initialized or learning
        return Q.pact_quantize(x, alpha, self.bits, signed)

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "enabled": self.enabled, "initialized": self.initialized}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.enabled = state["enabled"]
        self.initialized = state.get("initialized", True)  # checkpoints before alpha_init=mse: set

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        if self.signed is None:
            raise QnnrunError(f"the input quantizer of {name} was never calibrated: export a trained checkpoint")
        qmin, levels = Q.code_range(self.bits, self.signed, narrow=True)  # signed: -levels..levels (2+ bits)
        alpha = self.alpha.detach()
        return RoundGrid(levels / alpha, float(alpha) / levels, 0, qmin, levels, self.bits)

    def extra_repr(self) -> str:
        init = ", init=mse" if self.init == "mse" else ""
        fixed = "" if isinstance(self.alpha, nn.Parameter) else ", fixed"
        return f"bits={self.bits}, signed={self.signed}{init}{fixed}"


INITS = ("lsq", "mse")


MIN_STEP_RATIO = 1e-3
"""Default floor of a learned step, as a fraction of the step it was initialised with."""


class LsqQuantizer(Quantizer):
    """Uniform quantizer with a learned step (and, optionally, a learned offset).

    Args:
        bits: 1 to 8.
        signed: ``True`` (weights), or ``None`` to detect it from data: signed once a calibration
            batch (or, without calibration, the first input) holds a negative value.
        channels: output channels for one step per channel (axis 0, weights), ``None`` for one step.
        activations: ``x`` is a batch [B, ...] of activations: the gradient scale counts the
            features of one sample; else ``x`` is a weight tensor and the scale counts the values
            sharing a step.
        learned_offset: LSQ+'s learned offset (unsigned codes, any input sign).
        init: ``"lsq"`` (the step rule ``2 mean|x| / sqrt(Qp)``) or ``"mse"`` (the step of
            ``MSE_GRID`` x that rule with the least squared quantization error).
        min_step_ratio: the buffer ``min_step`` (shape of ``step``) is set to this fraction of the
            initial step; :meth:`raise_to_floor` keeps ``step >= min_step``.

    Parameters ``step`` (0-d, or [C] per channel; units of ``x``) and ``offset`` (0-d, only with
    ``learned_offset``) are initialised from the data the first time the quantizer sees it: over
    all calibration batches while ``calibrating`` (see ``Method.prepare``), else from the first
    training input. An evaluation before that uses the rule on each input without storing it.
    """

    def __init__(self, bits: int, signed: bool | None = True, channels: int | None = None,
                 activations: bool = False, learned_offset: bool = False, init: str = "lsq",
                 min_step_ratio: float = MIN_STEP_RATIO) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r}: choose one of {', '.join(INITS)}")
        self.bits = bits
        self.init = init
        self.signed = False if learned_offset else signed
        self.auto_signed = signed is None and not learned_offset
        self.activations = activations
        self.step = nn.Parameter(torch.ones(channels) if channels is not None else torch.tensor(1.0))
        self.offset = nn.Parameter(torch.tensor(0.0)) if learned_offset else None
        self.min_step_ratio = min_step_ratio
        self.register_buffer("min_step", torch.zeros_like(self.step.detach()))
        self.initialized = False
        self._sums: tuple[Tensor, Tensor, Tensor, int] | None = None  # calibration: sum|x|, sum x, min x, count
        self._search: tuple[SquaredErrorSearch, bool] | None = None  # MSE init over calibration, its sign

    @property
    def per_channel(self) -> bool:
        return self.step.dim() == 1

    def code_range(self, signed: bool | None = None) -> tuple[int, int]:
        """Integer codes ``(-Qn, Qp)`` for ``signed`` (default: the quantizer's; unsigned until known)."""
        return Q.code_range(self.bits, bool(self.signed if signed is None else signed))

    def reset(self) -> None:
        """Forget the initialisation (and a sign detected from data) before a new calibration."""
        self.initialized = False
        self._sums = None
        self._search = None
        if self.auto_signed:
            self.signed = None

    def _reduce(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """``sum|x|``, ``sum x``, ``min x`` per step (shape of ``step``) and the count per step."""
        flat = x.detach().float().flatten(1) if self.per_channel else x.detach().float().reshape(1, -1)
        sums = flat.abs().sum(1), flat.sum(1), flat.amin(1)
        if not self.per_channel:
            sums = tuple(s.reshape(()) for s in sums)
        return (*sums, flat.shape[1])

    def _initial(self, sums: tuple[Tensor, Tensor, Tensor, int], signed: bool) -> tuple[Tensor, Tensor | None]:
        """Step (and offset) from the statistics: LSQ's ``2 mean|x| / sqrt(Qp)``."""
        abs_sum, total, minimum, count = sums
        _, qmax = self.code_range(signed)
        if self.offset is not None:
            return (2 * (total / count - minimum) / qmax**0.5).clamp_min(1e-8), minimum
        if signed and self.bits == 1:
            # For sign, mean|x| is the L2-optimal scale; the LSQ rule would give twice it.
            return (abs_sum / count).clamp_min(1e-8), None
        return (2 * (abs_sum / count) / qmax**0.5).clamp_min(1e-8), None

    def _observe(self, x: Tensor) -> None:
        """Fold ``x`` into the initialisation statistics and set the parameters from them."""
        if self.auto_signed and (self.signed is None or (self.calibrating and not self.signed)):
            self.signed = bool((x.detach().amin() < 0).item())
        sums = self._reduce(x)
        if self._sums is not None and self.calibrating:
            old = self._sums
            sums = (old[0] + sums[0], old[1] + sums[1], torch.minimum(old[2], sums[2]), old[3] + sums[3])
        self._sums = sums if self.calibrating else None
        signed = bool(self.signed)
        step, offset = self._initial(sums, signed)
        if self.init == "mse":
            if self._search is None or self._search[1] != signed:  # first batch, or the sign found since: start over
                self._search = (SquaredErrorSearch(step), signed)
            qmin, qmax = self.code_range(signed)
            rows = x.flatten(1) if self.per_channel else x.reshape(1, -1)
            step = self._search[0].add(rows, lambda v, s: Q.lsq_quantize(v, s, qmin, qmax, 1.0, offset))
            if not self.calibrating:
                self._search = None
        self.step.copy_(step.to(self.step.dtype))
        self.min_step.copy_(self.step * self.min_step_ratio)
        if self.offset is not None:
            self.offset.copy_(offset.to(self.offset.dtype))
        self.initialized = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before the floor existed: the floor of the step as saved.
        if prefix + "step" in state_dict and prefix + "min_step" not in state_dict:
            state_dict[prefix + "min_step"] = state_dict[prefix + "step"] * self.min_step_ratio
        super()._load_from_state_dict(state_dict, prefix, *args)

    def grad_scale(self, x: Tensor, signed: bool) -> float:
        """``g = 1 / sqrt(N * Qp)`` for input ``x`` (see the class docstring for ``N``)."""
        values = x[0].numel() if self.activations else x.numel() // self.step.numel()
        return Q.lsq_grad_scale(values, self.code_range(signed)[1])

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating or (self.training and not self.initialized):
            with torch.no_grad():
                self._observe(x)
        signed = resolved_sign(self.signed, x)
        step, offset = self.step, self.offset
        if not self.initialized:  # evaluation before any initialisation: use the rule, store nothing
            step, offset = self._initial(self._reduce(x), signed)
        if self.per_channel:
            step = step.view(-1, *([1] * (x.dim() - 1)))
        qmin, qmax = self.code_range(signed)
        return Q.lsq_quantize(x, step, qmin, qmax, self.grad_scale(x, signed), offset)

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "initialized": self.initialized, "enabled": self.enabled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.initialized = state["initialized"]
        self.enabled = state["enabled"]

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        if self.offset is not None:
            raise QnnrunError(f"{name}: method.learned_offset=true (LSQ+) has no integer form here: valid is "
                              f"method.learned_offset=false")
        if not self.initialized or self.signed is None:
            raise QnnrunError(f"the input quantizer of {name} has no calibrated step: export a trained checkpoint")
        step = self.step.detach().reshape(())
        qmin, qmax = self.code_range()
        if (qmin, qmax) == (-1, 1):
            return SignGrid(float(step))
        return RoundGrid(1.0 / step, float(step), 0, qmin, qmax, self.bits)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        qmin, qmax = self.code_range(True)
        levels = SIGN_LEVELS.clone() if (qmin, qmax) == (-1, 1) else torch.arange(qmin, qmax + 1)
        rows = weight.shape[0]
        return WeightGrid(self.bits, levels, per_row(self.step, rows), torch.zeros(rows, dtype=torch.int64))

    def extra_repr(self) -> str:
        granularity = "channel" if self.per_channel else "tensor"
        offset = ", learned_offset" if self.offset is not None else ""
        init = ", init=mse" if self.init == "mse" else ""
        return f"bits={self.bits}, signed={self.signed}, per_{granularity}{offset}{init}"
