"""``qnnrun export format=onnx``: a QuantizeLinear / DequantizeLinear (QDQ) ONNX graph of a 2-8 bit run.

Every quantized conv/linear layer becomes, in opset 13:

* input: ``Clip`` to the ``b``-bit range ``[(qmin - z) s, (qmax - z) s]``, then ``QuantizeLinear`` ->
  ``DequantizeLinear`` with int8 (signed codes) or uint8 (unsigned or affine codes) storage and
  the layer's scale and zero point: the clip is what makes a ``b < 8``-bit range out of the 8-bit
  storage type;
* weight: an int8 (uint8 with the affine zero points of ``quant.init=mmse``) initializer holding
  the ``b``-bit integer weights, ``DequantizeLinear`` with one scale per output channel (``axis=0``);
* the float ``Conv`` / ``MatMul`` (+ bias) and every other module (BatchNorm, ReLU, pooling,
  residual adds) as the float model has them: a BatchNorm stays a node of its own, also after a
  float conv, where the exporter's eval mode would fold it into the conv's weights.

The graph is traced by PyTorch's TorchScript ONNX exporter (``dynamo=False``: no onnxscript
needed) from a copy of the model whose quantized layers call ``torch.fake_quantize_per_*_affine``;
the weights' ``QuantizeLinear`` is then folded into integer initializers with ``onnx``.
The graph computes what PyTorch computes, in float32 summed in another order (onnxruntime's conv
kernels are not PyTorch's; ONNX ``QuantizeLinear`` divides by the scale where PyTorch multiplies by
``1 / s``): a value within an ulp or two of a rounding tie can land on the neighbouring code, so
predictions agree with PyTorch on nearly, not provably, every input (``check=true`` counts them;
docs/export.md has the numbers). Layers whose input is binary, ternary or
power-of-two (BNN, AQE, QNN's log activations), UNIQ's non-uniform weights and weights that need
more than 8 bits as integers (DoReFa at 8 bits, power-of-two weights above 4 bits) have no QDQ form.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.export.grids import probe_batch, weight_codes
from qnnrun.metrics.bops import layer_costs, layer_widths
from qnnrun.quant.convert import layer_name
from qnnrun.quant.grids import RoundGrid
from qnnrun.quant.layers import QuantConv2d, QuantLayer, quant_layers

if TYPE_CHECKING:
    from qnnrun.evaluate import SavedRun

OPSET = 13
# Largest |code| of int8 weights that onnxruntime's u8s8 integer kernels multiply exactly. On x86
# CPUs without VNNI (AVX2, AVX-512 before VNNI) they add pairs of uint8 x int8 products in int16
# (VPMADDUBSW), which saturates once |w1| + |w2| > 128 for inputs up to 255 (onnxruntime's
# quantization docs: "reduce_range" or the U8U8 format avoid it). Its graph optimizations (the
# default session) fuse a QDQ MatMul/Conv into those kernels.
SATURATION_FREE = 64


def _storage(low: int, high: int) -> tuple[int, int] | None:
    """The 8-bit storage range holding integers ``low..high``: int8, uint8, or ``None``."""
    if -128 <= low and high <= 127:
        return -128, 127
    if 0 <= low and high <= 255:
        return 0, 255
    return None


class QdqLayer(nn.Module):
    """A quantized conv/linear layer written with PyTorch's fake-quantize ops, which the ONNX
    exporter turns into QuantizeLinear/DequantizeLinear pairs. Input and output as the layer's."""

    def __init__(self, name: str, layer: QuantLayer, example: Tensor) -> None:
        super().__init__()
        grid = layer.weight_grid(name)
        if not grid.uniform:
            raise QnnrunError(f"{name}: non-uniform (UNIQ) weights have no QuantizeLinear form: use format=int")
        codes = weight_codes(grid, layer.effective_weight(), name)
        levels = grid.levels[codes]  # the stored codes: levels, with the zero point kept apart
        zero_point = grid.zero_point
        # The storage type must hold the codes and the zero points.
        storage = _storage(min(int(levels.min()), int(zero_point.min())), max(int(levels.max()), int(zero_point.max())))
        if storage is None:
            # One line that says what to change: "takes 2-8 bit weights" was wrong for these 8-bit ones.
            raise QnnrunError(f"{name}: its {grid.bits}-bit weights are the integers {int(levels.min())}.."
                              f"{int(levels.max())}, which int8/uint8 cannot hold: format=onnx takes weights whose "
                              f"integers fit 8 bits (DoReFa/PACT weights up to 7 bits, power-of-two weights up to 4 "
                              f"bits); train this layer at fewer bits (PACT's 8-bit first/last layers: "
                              f"quant.first_layer=fp quant.last_layer=fp) or use format=int")
        if storage == (-128, 127) and max(-int(levels.min()), int(levels.max())) > SATURATION_FREE:
            # Wide signed codes go to uint8 with the zero point moved by 128 (the same values):
            # onnxruntime's u8u8 kernels cannot saturate, its u8s8 ones can (see SATURATION_FREE).
            levels, zero_point, storage = levels + 128, zero_point + 128, (0, 255)
        self.weight_storage = storage
        self.conv = ({"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                      "groups": layer.groups} if isinstance(layer, QuantConv2d) else None)
        view = (-1,) + (1,) * (layer.weight.dim() - 1)
        scale = grid.scale.float()
        self.register_buffer("weight_scale", torch.where(scale == 0, torch.ones_like(scale), scale))
        self.register_buffer("weight_zero_point", zero_point.int())
        self.weight = nn.Parameter(((levels - zero_point.view(view)) * self.weight_scale.view(view)).float(),
                                   requires_grad=False)
        self.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False) if layer.bias is not None else None
        self.input_range: tuple[float, float] | None = None
        if layer.input_quant is not None and layer.input_quant.enabled:
            grid_in = layer.input_grid(name, example)
            if not isinstance(grid_in, RoundGrid):
                raise QnnrunError(f"{name}: a {type(grid_in).__name__.removesuffix('Grid').lower()} input has no "
                                  f"QuantizeLinear form: format=onnx takes 2-8 bit uniform inputs (use format=int)")
            low, high = grid_in.qmin, grid_in.qmax
            self.input_storage = _storage(low, high)
            if self.input_storage is None or grid_in.scale <= 0:
                raise QnnrunError(f"{name}: input codes {low}..{high} (scale {grid_in.scale:.3g}) have no int8/uint8 "
                                  f"form")
            self.input_scale, self.input_zero_point = float(grid_in.scale), int(grid_in.zero_point)
            self.input_range = ((low - grid_in.zero_point) * grid_in.scale, (high - grid_in.zero_point) * grid_in.scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_range is not None:
            x = torch.clamp(x, *self.input_range)
            x = torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero_point, *self.input_storage)
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, self.weight_zero_point, 0,
                                                        *self.weight_storage)
        if self.conv is None:
            return F.linear(x, weight, self.bias)
        return F.conv2d(x, weight, self.bias, **self.conv)


def qdq_model(model: nn.Module, example: Tensor) -> nn.Module:
    """A copy of the fake-quant ``model`` whose quantized layers are :class:`QdqLayer` modules."""
    qdq = copy.deepcopy(model).eval()
    inputs: dict[str, Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0]))
             for name, layer in quant_layers(qdq)]
    with torch.no_grad():
        qdq(example)
    for hook in hooks:
        hook.remove()
    for name, layer in quant_layers(qdq):
        if layer.weight_quant is None:
            raise QnnrunError(f"{layer_name(layer, name)} has float weights and a quantized input: format=onnx takes "
                              f"models whose quantized layers quantize their weights (bits.w 2-8)")
        qdq.set_submodule(name, QdqLayer(layer_name(layer, name), layer, inputs[name]))
    return qdq


def _fold_weight_quantize(graph: Any) -> None:
    """Replace each ``QuantizeLinear`` of an initializer by an integer initializer holding its result."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                 if node.op_type == "Constant" and node.attribute[0].name == "value"}
    constants.update({name: numpy_helper.to_array(init) for name, init in initializers.items()})
    for node in graph.node:  # zero points arrive through a Cast of a constant
        if node.op_type == "Cast" and node.input[0] in constants:
            dtype = helper.tensor_dtype_to_np_dtype(node.attribute[0].i)
            constants[node.output[0]] = constants[node.input[0]].astype(dtype)
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            continue
        values, scale, zero_point = (constants[name] for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        if scale.ndim:
            shape[axis] = -1
        info = np.iinfo(zero_point.dtype)
        codes = np.clip(np.rint(values / scale.reshape(shape)) + zero_point.reshape(shape), info.min, info.max)
        graph.initializer.append(numpy_helper.from_array(codes.astype(zero_point.dtype), node.output[0]))
        graph.node.remove(node)
        if not any(node.input[0] in other.input for other in graph.node):
            graph.initializer.remove(initializers[node.input[0]])


# Class names of the data sets whose classes are fixed (label index order); others store indices.
CLASS_NAMES = {
    "digits": [str(i) for i in range(10)], "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def model_metadata(run: SavedRun, source: Path) -> dict[str, str]:
    """What a deployment needs to feed the graph and read its output (ONNX ``metadata_props``, all
    text): the preprocessing of the input, its shape, the class names, and where the model came from.
    The widths as ``summary.json`` has them: ``bits_w``/``bits_a`` the run's ``bits``, ``bits`` the
    log's label (``W2/A2`` or ``mixed (...)``), ``layer_bits`` a mixed run's real width of every
    conv/linear (JSON name -> {w, a}, forward order; ``null`` when one width runs throughout)."""
    dataset = run.config.dataset
    classes = CLASS_NAMES.get(run.info.name, [str(i) for i in range(run.info.num_classes)])
    layer_bits = None
    if run.method.mixed:
        layer_bits = layer_widths(layer_costs(run.model, probe_batch(run.info, next(run.model.parameters()).device)))
    return {
        "qnnrun.preprocessing": "images [N, C, H, W] float32: pixels (0-255) divided by 255, then per channel "
                                "(x - mean) / std",
        "qnnrun.mean": json.dumps(list(dataset.mean)), "qnnrun.std": json.dumps(list(dataset.std)),
        "qnnrun.in_channels": str(run.info.in_channels), "qnnrun.image_size": str(run.info.image_size),
        "qnnrun.class_names": json.dumps(classes), "qnnrun.dataset": run.info.name,
        "qnnrun.method": str(run.config.method.name), "qnnrun.bits_w": str(run.method.weight_bits),
        "qnnrun.bits_a": str(run.method.act_bits), "qnnrun.bits": run.method.bits_label,
        "qnnrun.layer_bits": json.dumps(layer_bits), "qnnrun.model": str(run.config.model.name),
        "qnnrun.source_checkpoint": str(source.resolve()), "qnnrun.epoch": str(run.epoch),
    }


def export_onnx(run: SavedRun, path: Path, source: Path) -> None:
    """Write the QDQ graph of ``run`` (read from ``source``) to ``path`` (input ``images`` [N, C, H, W],
    output ``logits`` [N, classes]), with :func:`model_metadata` in its ``metadata_props``."""
    try:
        import onnx
    except ImportError:
        raise QnnrunError("format=onnx needs the onnx package: pip install 'qnnrun[export]'") from None
    device = next(run.model.parameters()).device
    example = probe_batch(run.info, device)
    if not quant_layers(run.model):
        raise QnnrunError(f"method={run.config.method.name} has no quantized layer: format=onnx needs a 2-8 bit run")
    model = qdq_model(run.model, example)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        # keep_initializers_as_inputs skips the exporter's initializer deduplication, which (torch
        # 2.14) drops one of two equal scale buffers but keeps the node that reads it. TrainingMode.PRESERVE
        # (the model is in eval mode, so BatchNorm and dropout export for inference) skips the exporter's
        # eval-only pass that folds a BatchNorm into a preceding float Conv: the folded weights round
        # differently from PyTorch's conv then BatchNorm (docs/export.md, check=true).
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and chosen on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            # PRESERVE's advice to turn constant folding off is for models in training mode, not this one.
            warnings.filterwarnings("ignore", "It is recommended that constant folding be turned off", UserWarning)
            torch.onnx.export(model, (example,), str(temporary), dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["logits"], keep_initializers_as_inputs=True,
                              training=torch.onnx.TrainingMode.PRESERVE,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(str(temporary))
        stored = {init.name for init in proto.graph.initializer}
        for graph_input in [i for i in proto.graph.input if i.name in stored]:
            proto.graph.input.remove(graph_input)
        _fold_weight_quantize(proto.graph)
        onnx.helper.set_model_props(proto, model_metadata(run, source))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(temporary))
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


# check=true: onnxruntime's graph as written (QDQ semantics op by op) and its default session,
# whose rewrites (Conv + BatchNorm fusion, QDQ pairs fused into integer kernels, float biases
# rounded to int32) change the arithmetic; each maps to the words the check's report prints.
OPTIMIZATION_LEVELS = {"ORT_DISABLE_ALL": "graph optimizations off", "ORT_ENABLE_ALL": "default graph optimizations"}


class OnnxRuntimeModel(nn.Module):
    """The ONNX file at ``path`` run by onnxruntime's CPU provider with the graph optimization
    ``level`` (a key of :data:`OPTIMIZATION_LEVELS`) and ``torch.get_num_threads()`` threads, called
    as the PyTorch model is: images [N, C, H, W] float32 -> logits [N, classes] float32 on the
    images' device."""

    def __init__(self, path: Path, level: str) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, images: Tensor) -> Tensor:
        logits = self.session.run(None, {"images": images.detach().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)
