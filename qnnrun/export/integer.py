"""The integer model: integer conv/linear layers with int32 accumulation and integer requantization.

:func:`integer_records` turns every quantized layer of a (fake-quant, evaluation-mode) model into a
record of plain tensors: packed weight codes, the level table, per-channel scales and zero points,
the input grid, an int32 bias with the following BatchNorm folded in, and, where the layer's output
reaches the next quantized layer only through modules that commute with quantization (ReLU,
hard-tanh, max-pooling, flatten, dropout), a per-channel fixed-point multiplier (int32 ``m`` and a
right shift ``n``) that maps the accumulator onto the next layer's integer input.
:func:`build_integer_model` puts :class:`IntegerLayer` modules built from those records into a
copy of the float structure.

What is integer in :meth:`IntegerLayer.forward` (uniform weights, quantized input):

1. input operands: the previous integer layer's requantized codes when there is one (see 4),
   else the layer's input quantizer applied to the float input (bit-exact with fake quantization);
2. ``acc = sum(x_op * w_op)``: exact. It is computed by ``conv2d`` / ``linear`` in float64 on
   integer-valued tensors (every partial sum is an integer below ``2^53``, so float64 is exact in
   any summation order, on any device: torch has no integer convolution on every device); on a
   CPU in float32 (about 13x faster) when no partial sum can reach ``2^24`` (see
   :meth:`IntegerLayer.accumulate`);
   the int32 accumulator is ``A = acc * 2^F + bias`` with the bias (the layer's bias and the
   folded BatchNorm shift, in units of ``s_in * s_w[c] * 2^-F``) rounded to int32; ``F``
   (:func:`bias_fraction_bits`) is the largest number of fraction bits, at most 16, for which the
   worst-case ``A`` fits in int32 (``F = 0`` is TFLite's bias); ``|A| < 2^31`` is also checked on
   every input;
3. float output for the float ops that follow (residual adds, average pooling, a float layer, the
   logits): ``A * s_in * s_w[c] * k[c] * 2^-F`` (``k`` the folded BatchNorm gain);
4. integer requantization for each following quantized layer: ``q = clamp((A * m[c] +
   2^(n[c]-1)) >> n[c], lo, hi)`` in int64 (``|A| < 2^31``, ``|m| < 2^31``), ``m * 2^-n`` the real
   multiplier ``s_in * s_w[c] * k[c] * 2^-F / s_next`` (gemmlowp / TFLite's scheme, rounding half
   up), then ReLU / hard-tanh as integer clamps and max-pooling / flatten on the codes; for a
   binary (sign) next layer the code is ``+1`` where ``sign(k[c]) * A >= 0``, with the bias
   rounded towards the threshold (floor for ``k > 0``, ceil for ``k < 0``), which is exact.

Not integer: layers whose input is float (the image of BNN / AQE / SQ first layers: float64
input times integer weight operands), UNIQ layers (integer accumulation per level,
``sum_k LUT[k] * acc_k`` in float64), and every module that is not a quantized conv/linear.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.export.grids import pack_codes, unpack_codes, weight_codes
from qnnrun.quant import functional as Q
from qnnrun.quant.fold import FoldedBatchNorm
from qnnrun.quant.grids import InputGrid, Pow2Grid, RoundGrid, SignGrid, WeightGrid, grid_from_state
from qnnrun.quant.layers import QuantConv2d, QuantLayer, ShiftBatchNorm, quant_layers

INT32_MAX = 2**31 - 1
FLOAT32_EXACT = 2**24  # float32 holds every integer of smaller magnitude exactly
# Modules that commute with a monotone quantizer: applied to the codes of the next layer they give
# the codes of their output (Q(max(y, a)) = max(Q(y), Q(a)), pooling takes maxima, the rest move values).
_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, FoldedBatchNorm)


def quantize_multiplier(real: Tensor) -> tuple[Tensor, Tensor]:
    """Fixed-point form ``real ~= m * 2^-n`` of each entry of ``real`` (float64 [C]).

    ``|m|`` lies in ``[2^30, 2^31)`` (int64 holding int32 values, sign of ``real``) and ``n`` in
    ``1..62``; a multiplier below ``2^-31`` keeps ``n = 62`` and a smaller ``m``; 0 gives ``m = 0``.
    """
    mantissa, exponent = torch.frexp(real.double())
    m = torch.round(mantissa * 2**31).long()
    carry = m.abs() == 2**31
    m = torch.where(carry, m // 2, m)
    shift = 31 - (exponent.long() + carry.long())
    if (shift < 1).any():
        raise QnnrunError(f"a requantization multiplier of {real.abs().max().item():.3g} is too large for the "
                          f"fixed-point form (at most 2^30)")
    small = shift > 62
    m = torch.where(small, torch.round(real.double() * 2.0**62).long(), m)
    shift = shift.clamp(max=62)
    return torch.where(real == 0, torch.zeros_like(m), m), torch.where(real == 0, torch.full_like(shift, 31), shift)


def requantize(total: Tensor, multiplier: Tensor, shift: Tensor) -> Tensor:
    """``round(total * m / 2^n)`` (half up) in int64; ``total`` int64 [..] with ``|total| < 2^31``,
    ``multiplier`` and ``shift`` broadcast against it."""
    return (total * multiplier + (1 << (shift - 1))) >> shift


@dataclass
class Target:
    """Integer hand-over from one layer to a following quantized layer ``layer``."""

    layer: str
    multiplier: Tensor  # [C] int64 (int32 values)
    shift: Tensor  # [C] int64
    ops: list[dict[str, Any]] = field(default_factory=list)  # pass-through modules, in order

    def state(self) -> dict[str, Any]:
        return {"layer": self.layer, "multiplier": self.multiplier.int(), "shift": self.shift.to(torch.int8),
                "ops": self.ops}


def _op_record(module: nn.Module) -> dict[str, Any] | None:
    """Plain description of a pass-through module (``None``: nothing to do on codes)."""
    if isinstance(module, nn.ReLU):
        return {"op": "clamp", "min": 0.0, "max": None}
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return {"op": "clamp", "min": float(module.min_val), "max": float(module.max_val)}
    if isinstance(module, nn.MaxPool2d):
        return {"op": "maxpool2d", "kernel_size": module.kernel_size, "stride": module.stride,
                "padding": module.padding, "dilation": module.dilation, "ceil_mode": module.ceil_mode}
    if isinstance(module, nn.Flatten):
        return {"op": "flatten", "start_dim": module.start_dim, "end_dim": module.end_dim}
    return None


def _apply_op(op: dict[str, Any], codes: Tensor, grid: InputGrid) -> Tensor:
    """Apply a pass-through op to the operands ``codes`` of ``grid`` (a clamp at ``y`` becomes a clamp
    at the operand of ``y``)."""
    if op["op"] == "clamp":
        def operand(value: float) -> float:
            return float(grid.operands(torch.tensor([value]))[0])
        low = operand(op["min"])
        high = operand(op["max"]) if op["max"] is not None else None
        return codes.clamp(low, high)
    if op["op"] == "maxpool2d":
        return F.max_pool2d(codes, op["kernel_size"], op["stride"], op["padding"], op["dilation"], op["ceil_mode"])
    return torch.flatten(codes, op["start_dim"], op["end_dim"])


def _bn_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """Gain ``k`` and shift ``t`` (float64 [C]) of an evaluation-mode BatchNorm; ``None`` for anything
    else, a BatchNorm without running statistics, and a :class:`FoldedBatchNorm` (an identity)."""
    batch_norm = isinstance(norm, nn.modules.batchnorm._BatchNorm) and not isinstance(norm, FoldedBatchNorm)
    if not batch_norm or norm.running_mean is None:
        return None
    mean, var = norm.running_mean.double(), norm.running_var.double()
    inv_std = (var + norm.eps).rsqrt()
    weight = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(mean)
    if isinstance(norm, ShiftBatchNorm):  # BinaryNet's: every factor rounded to a power of two
        inv_std, weight = Q.power_of_two(inv_std.float()).double(), Q.power_of_two(weight.float()).double()
    gain = inv_std * weight
    shift = -mean * gain + (norm.bias.detach().double() if norm.bias is not None else 0.0)
    return gain.cpu(), shift.cpu()


# ---- the probe: which modules follow each quantized layer -----------------------------------------


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: list[tuple[int, Tensor]]  # (id, value at call time) of each tensor argument
    output: tuple[int, Tensor] | None


def _trace(model: nn.Module, example: Tensor) -> list[_Call]:
    """Every call of a leaf module (quantized layers count as leaves) on one evaluation pass, with
    input values cloned before the call (in-place modules change them) and outputs after it."""
    quantized = {m for _, m in quant_layers(model)}
    inside = {sub for layer in quantized for sub in layer.modules() if sub is not layer}
    leaves = {m: n for n, m in model.named_modules() if m in quantized or (not list(m.children()) and m not in inside)}
    calls: list[_Call] = []
    pending: dict[int, list[tuple[int, Tensor]]] = {}
    keep: list[Any] = []  # holds every traced tensor so that no id is reused during the pass

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        pending[id(module)] = [(id(a), a.detach().clone()) for a in args if isinstance(a, Tensor)]
        keep.extend(args)

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        keep.append(output)
        out = (id(output), output.detach().clone()) if isinstance(output, Tensor) else None
        calls.append(_Call(leaves[module], module, pending.pop(id(module)), out))

    handles = [m.register_forward_pre_hook(before) for m in leaves] + [m.register_forward_hook(after) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@dataclass
class _Plan:
    folded_bn: str | None
    targets: list[tuple[str, list[nn.Module]]]


def _plan(calls: list[_Call], index: int, integer_inputs: set[str]) -> _Plan:
    """BatchNorm to fold into the layer of ``calls[index]`` and the quantized layers its output reaches
    through pass-through modules only (checked on values, so in-place and functional ops in
    between are seen)."""
    out_id, value = calls[index].output  # type: ignore[misc]
    consumers = [j for j in range(index + 1, len(calls)) if any(i == out_id for i, _ in calls[j].inputs)]
    folded = None
    start = index
    if len(consumers) == 1 and _bn_affine(calls[consumers[0]].module) is not None:
        bn = calls[consumers[0]]
        if torch.equal(bn.inputs[0][1], value):
            folded, start = bn.name, consumers[0]
            out_id, value = bn.output  # type: ignore[misc]
    targets: list[tuple[str, list[nn.Module]]] = []

    def walk(position: int, tensor_id: int, expected: Tensor, ops: list[nn.Module]) -> None:
        for j in range(position + 1, len(calls)):
            call = calls[j]
            if not any(i == tensor_id and torch.equal(v, expected) for i, v in call.inputs):
                continue
            if isinstance(call.module, QuantLayer):
                if call.name in integer_inputs and call.name not in [name for name, _ in targets]:
                    targets.append((call.name, ops))
            elif isinstance(call.module, _PASS_THROUGH) and call.output is not None:
                walk(j, call.output[0], call.output[1], ops + [call.module])

    walk(start, out_id, value, [])
    return _Plan(folded, targets)


# ---- records ------------------------------------------------------------------------------------


def largest_operand(in_grid: InputGrid) -> float:
    """The largest ``|operand|`` of an input grid: its own codes and the codes handed to it alike."""
    if isinstance(in_grid, RoundGrid):
        return max(abs(v) for v in in_grid.operand_range)
    return 1.0 / in_grid.scale if isinstance(in_grid, Pow2Grid) else 1.0


def bias_fraction_bits(layer: QuantLayer, grid: WeightGrid, in_grid: InputGrid, real_bias: Tensor,
                       most: int = 16) -> int:
    """Fraction bits ``F`` of the int32 bias: the largest ``F <= most`` for which the accumulator
    ``acc * 2^F + bias`` of the worst case (every product at its largest magnitude) fits in int32.
    ``F = 0`` is TFLite's bias in units of ``s_in * s_w``; more bits keep the rounding of a
    BatchNorm-folded bias from moving the layer's output."""
    fan_in = layer.weight[0].numel()
    largest_weight = (grid.levels[:, None] - grid.zero_point[None, :]).abs().max().item()
    worst = fan_in * largest_operand(in_grid) * largest_weight + real_bias.abs().max().item() + 1
    return max(0, min(most, math.floor(31 - math.log2(worst)) - 1))


def _integer_input(layer: QuantLayer) -> bool:
    return layer.input_quant is not None and layer.input_quant.enabled


@torch.no_grad()
def integer_records(model: nn.Module, example: Tensor) -> dict[str, dict[str, Any]]:
    """One record per quantized layer with quantized weights (see the module docstring), keyed by
    the layer's qualified name. ``model`` is the fake-quant model, ``example`` an input batch
    [B, C, H, W] used to trace the structure (its values only check what reaches each layer)."""
    was_training = model.training
    model.eval()
    try:
        calls = _trace(model, example)
        layers = dict(quant_layers(model))
        exported = {name for name, layer in layers.items() if layer.weight_quant is not None}
        inputs: dict[str, InputGrid] = {}
        for call in calls:
            layer = call.module
            if call.name in exported and _integer_input(layer) and call.name not in inputs:
                inputs[call.name] = layer.input_grid(call.name, call.inputs[0][1])
        weights = {name: layers[name].weight_grid(name) for name in exported}
        # Requantization targets: integer layers whose input grid is monotone non-decreasing in the
        # input (a learned step that went negative reverses it, and ReLU no longer commutes).
        integer_inputs = {name for name, grid in inputs.items() if weights[name].uniform and (
            isinstance(grid, SignGrid) or (isinstance(grid, RoundGrid) and grid.mult.item() > 0))}
        modules = {call.name: call.module for call in calls}
        records: dict[str, dict[str, Any]] = {}
        for index, call in enumerate(calls):
            if call.name not in exported or call.name in records:
                continue
            plan = _plan(calls, index, integer_inputs)
            records[call.name] = _record(call.name, layers[call.name], weights[call.name], inputs.get(call.name),
                                         plan, modules, inputs)
        return records
    finally:
        model.train(was_training)


def _record(name: str, layer: QuantLayer, grid: WeightGrid, in_grid: InputGrid | None, plan: _Plan,
            modules: dict[str, nn.Module], inputs: dict[str, InputGrid]) -> dict[str, Any]:
    """The export record of ``layer`` (see :func:`integer_records`)."""
    codes = weight_codes(grid, layer.effective_weight(), name)
    rows = layer.weight.shape[0]
    bias = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros(rows, dtype=torch.float64)
    gain, shift = torch.ones(rows, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64)
    if plan.folded_bn is not None:
        gain, shift = _bn_affine(modules[plan.folded_bn])  # type: ignore[misc]
    record: dict[str, Any] = {
        "kind": "conv" if isinstance(layer, QuantConv2d) else "linear",
        "weight_shape": list(layer.weight.shape),
        "weight_bits": grid.bits,
        "codes": pack_codes(codes, grid.bits),
        "levels": grid.levels.clone(),
        "weight_scale": grid.scale.float(),
        "weight_zero_point": grid.zero_point.int(),
        "input": in_grid.state() if in_grid is not None else None,
        "folded_bn": plan.folded_bn,
        "targets": [],
    }
    if isinstance(layer, QuantConv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise QnnrunError(f"{name}: padding_mode={layer.padding_mode!r} / padding={layer.padding!r} has no integer "
                              f"form here: valid is zero padding given as numbers")
        record["conv"] = {"stride": list(layer.stride), "padding": list(layer.padding),
                          "dilation": list(layer.dilation), "groups": layer.groups}
    if in_grid is None or not grid.uniform:  # float input or non-uniform levels: float gain and bias
        record.update(gain=gain * grid.scale, float_bias=gain * bias + shift)
        return record
    if (gain == 0).any():
        raise QnnrunError(f"{plan.folded_bn}: a BatchNorm channel with gain 0 cannot be folded into integer {name}")
    step = in_grid.scale * grid.scale.double()  # the real value of one accumulator unit, per channel
    real_bias = (bias + shift / gain) / step  # in accumulator units
    fraction = bias_fraction_bits(layer, grid, in_grid, real_bias)
    unit = 2.0**-fraction  # accumulator units per unit of the shifted accumulator acc * 2^F + bias
    record["bias_fraction_bits"] = fraction
    record["output_multiplier"] = step * gain * unit  # float output = (acc * 2^F + bias) * this
    signs = []
    for target_name, ops in plan.targets:
        target = inputs[target_name]
        if isinstance(target, SignGrid):
            signs.append(target_name)
            m, n = torch.sign(gain).long(), torch.zeros(rows, dtype=torch.int64)
        else:
            m, n = quantize_multiplier(step * gain * unit * target.mult.double().item())
        record["targets"].append(Target(target_name, m, n, [r for r in map(_op_record, ops) if r]).state())
    if signs and len(signs) != len(plan.targets):
        signs.clear()  # one bias for all targets: round to nearest, the sign targets lose exactness
        record["targets"] = [t for t in record["targets"] if t["layer"] not in signs]
    scaled = real_bias * 2.0**fraction
    if signs:  # sign(M) * (acc * 2^F + b) >= 0 is then exact: floor the bias for M > 0, ceil it for M < 0
        rounded = torch.where(gain > 0, torch.floor(scaled), torch.ceil(scaled))
    else:
        rounded = torch.round(scaled)
    if rounded.abs().max() > INT32_MAX:
        raise QnnrunError(f"{name}: the integer bias {rounded.abs().max().item():.3g} does not fit in int32")
    record["bias"] = rounded.int()
    return record


# ---- the integer layer --------------------------------------------------------------------------


class IntegerLayer(nn.Module):
    """A conv2d / linear layer run from an export record (see the module docstring).

    Input [B, C_in, H, W] (conv) or [B, in_features] (linear) float; output float, the layer's
    (BatchNorm-folded) output. Integer inputs handed over by the previous layer arrive through
    :meth:`receive` before the forward call.
    """

    def __init__(self, name: str, record: dict[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.kind = record["kind"]
        self.conv = record.get("conv")
        shape = record["weight_shape"]
        count = 1
        for size in shape:
            count *= size
        codes = unpack_codes(record["codes"], record["weight_bits"], count).view(shape)
        levels = record["levels"]
        self.uniform = not levels.is_floating_point()
        self.input_grid = grid_from_state(record["input"]) if record["input"] is not None else None
        view = (-1,) + (1,) * (len(shape) - 1)
        zero_point = record["weight_zero_point"].long().view(view)
        self.register_buffer("weight_scale", record["weight_scale"].double())
        if self.uniform:
            self.register_buffer("weight_operands", (levels[codes] - zero_point).double())
        else:
            self.register_buffer("weight_codes", codes)
            self.register_buffer("levels", levels.double())
        # Whether no partial sum of sum(x_op * w_op) can reach 2^24 (see accumulate).
        self.float32_exact = False
        if self.uniform and self.input_grid is not None and count > 0:
            row_l1 = float(self.weight_operands.abs().flatten(1).sum(1).max())
            self.float32_exact = largest_operand(self.input_grid) * row_l1 < FLOAT32_EXACT
        self.integer = "bias" in record
        if self.integer:
            self.register_buffer("bias", record["bias"].long())
            self.fraction_bits = record["bias_fraction_bits"]
            self.register_buffer("output_multiplier", record["output_multiplier"].double())
        else:
            self.register_buffer("gain", record["gain"].double())
            self.register_buffer("float_bias", record["float_bias"].double())
        self.targets = record["targets"]
        self._receivers: list[IntegerLayer] = []
        self._received: Tensor | None = None
        self.handoffs = 0  # elements received from the previous layer ...
        self.handoff_mismatches = 0  # ... that differ from quantizing the float input here

    def connect(self, layers: dict[str, IntegerLayer]) -> None:
        """Resolve the names of the layers this one hands integer codes to."""
        self._receivers = [layers[t["layer"]] for t in self.targets]

    def receive(self, operands: Tensor) -> None:
        """Integer input operands (float64 holding integers) for the next forward call."""
        self._received = operands

    def _matmul(self, x: Tensor, weight: Tensor) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, weight)
        return F.conv2d(x, weight, None, self.conv["stride"], self.conv["padding"], self.conv["dilation"],
                        self.conv["groups"])

    def accumulate(self, operands: Tensor) -> Tensor:
        """``acc = sum(x_op * w_op)`` per output (float64 holding integers), exact.

        On a CPU in float32 when ``max|x_op| * max_c sum_i |w_op[c, i]| < 2^24``, ``max|x_op|`` the
        input grid's largest operand (every layer of the trained W3A3 / W4A4 CIFAR-10 ResNet-20s
        tried, 8-bit first and last layers included): every product and every partial sum, in any
        order, is then an integer that float32 holds exactly. Elsewhere, or when float32 conv /
        matmul may run at reduced precision (``torch.set_float32_matmul_precision`` below highest,
        oneDNN bf16), in float64.
        """
        if self.float32_exact and operands.device.type == "cpu" and _cpu_float32_is_ieee():
            return self._matmul(operands.float(), self.weight_operands.float()).double()
        return self._matmul(operands, self.weight_operands)

    def _channel(self, value: Tensor, dim: int) -> Tensor:
        return value.view(-1, *([1] * (dim - 2))) if self.kind == "conv" else value

    def _float_output(self, acc: Tensor) -> Tensor:
        return (acc * self._channel(self.gain, acc.dim()) + self._channel(self.float_bias, acc.dim())).float()

    def forward(self, x: Tensor) -> Tensor:
        if self.input_grid is None:  # float input times the weight levels, in float64
            weight = self.weight_operands if self.uniform else self.levels[self.weight_codes]
            return self._float_output(self._matmul(x.double(), weight))
        own = self.input_grid.operands(x)
        operands = own
        if self._received is not None:
            operands, self._received = self._received, None
            self.handoffs += operands.numel()
            self.handoff_mismatches += int((operands != own).sum())
        operands = operands.to(self.weight_scale.device)
        if not self.uniform:  # UNIQ: integer accumulation per level, float sum over the levels
            acc = sum(self.levels[k] * self._matmul(operands, (self.weight_codes == k).double())
                      for k in range(self.levels.numel()))
            return self._float_output(acc * self.input_grid.scale)
        acc = self.accumulate(operands)
        total = acc * 2.0**self.fraction_bits + self._channel(self.bias, acc.dim()).double()
        peak = _peak(total)
        if peak > INT32_MAX:
            raise QnnrunError(f"{self.name}: accumulator {peak:.0f} overflows int32")
        for target, receiver in zip(self.targets, self._receivers, strict=True):
            grid = receiver.input_grid
            if isinstance(grid, SignGrid):
                codes = torch.where(total * self._channel(target["multiplier"].double(), total.dim()) >= 0, 1.0,
                                    -1.0).double()
            else:
                low, high = grid.operand_range
                codes = requantize(total.long(), self._channel(target["multiplier"].long(), total.dim()),
                                   self._channel(target["shift"].long(), total.dim())).clamp(low, high).double()
            for op in target["ops"]:
                codes = _apply_op(op, codes, grid)
            receiver.receive(codes)
        return (total * self._channel(self.output_multiplier, total.dim())).float()


def _peak(values: Tensor) -> float:
    """``max |values|`` (0 for an empty tensor) in one pass, without the ``abs`` temporary."""
    if not values.numel():
        return 0.0
    low, high = torch.aminmax(values)
    return max(-low.item(), high.item())


def _cpu_float32_is_ieee() -> bool:
    """Whether float32 conv and matmul on a CPU compute in IEEE float32 (no bf16 shortcut allowed)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = torch.backends.mkldnn  # torch >= 2.9: per-operation settings, "none" = IEEE
    return all(getattr(getattr(mkldnn, op, None), "fp32_precision", "none") in ("none", "ieee")
               for op in ("conv", "matmul"))


def build_integer_model(model: nn.Module, records: dict[str, dict[str, Any]]) -> nn.Module:
    """A copy of ``model`` (evaluation mode) whose quantized layers named in ``records`` are
    :class:`IntegerLayer` modules and whose folded BatchNorms are identities."""
    integer = copy.deepcopy(model).eval()
    layers: dict[str, IntegerLayer] = {}
    for name, record in records.items():
        layers[name] = IntegerLayer(name, record).to(next(model.parameters()).device)
        integer.set_submodule(name, layers[name])
        if record["folded_bn"] is not None:
            integer.set_submodule(record["folded_bn"], nn.Identity())
    for layer in layers.values():
        layer.connect(layers)
    return integer


def exported_keys(records: dict[str, dict[str, Any]]) -> Callable[[str], bool]:
    """Predicate on a model's state-dict keys: whether a key belongs to a module the records
    (:func:`integer_records`, by dotted module name) replace, a quantized layer or its folded BatchNorm."""
    prefixes = [name + "." for name in records] + [r["folded_bn"] + "." for r in records.values() if r["folded_bn"]]
    return lambda key: any(key.startswith(p) for p in prefixes)
