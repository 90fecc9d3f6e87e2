"""``qnnrun export`` and ``qnnrun eval backend=int``: load a run, write or run its integer model
(or write its ONNX graph and, with ``check=true``, count the test predictions onnxruntime changes).

The integer export (``format=int``) is the dict below. On disk (:func:`save_integer_export`,
written atomically by :func:`qnnrun.checkpoint.save_atomic`, read with ``torch.load(weights_only=True)``)
its tensors are concatenated into one uint8 tensor and the dict keeps their offsets::

    {"format": "qnnrun-int", "version": 1, "config": the run config, "info": the data set's shape,
     "epoch": int, "layers": {layer name: integer record (qnnrun.export.integer)},
     "float_state": state dict of every module the records do not replace,
     "bn_folded_in_training": whether the run folded its BatchNorms itself (nbn/fbf/lbl; for readers:
                              qnnrun rebuilds folded BatchNorms from their identity entries in float_state),
     "sizes": {"packed_weight_bytes", "float_weight_bytes", "reported_weight_memory_bytes"}}

The model structure is rebuilt from ``config`` (model, method and bits) as a checkpoint is; the
records then replace its quantized layers.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from qnnrun.build import build_quantized_model, example_input, select_device
from qnnrun.checkpoint import check_archive, check_output_file, checkpoint_file, new_folder, save_atomic
from qnnrun.config import check_bool, check_choice
from qnnrun.data import DataBundle, DataInfo
from qnnrun.errors import QnnrunError, plural
from qnnrun.evaluate import SavedRun, eval_report_line, evaluate, load_saved_run, saved_run_data
from qnnrun.export.grids import probe_batch
from qnnrun.export.integer import build_integer_model, exported_keys, integer_records
from qnnrun.metrics.bops import layer_costs
from qnnrun.schema import saved_config

FORMATS = ("int", "onnx")
# qnnrun eval backend=...: the fake-quant model or the integer model that format=int writes.
BACKENDS = ("fake", "int")
INT_FORMAT = "qnnrun-int"
INT_VERSION = 1


def weight_sizes(run: SavedRun, records: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Bytes of the packed weight codes, of the float conv/linear weights, and the weight memory the
    run's summary reports (``weight_memory_mb``) as the packing stores it: each layer's
    ``params * weight_bits`` bits rounded up to whole bytes (``reported_weight_memory_bytes``)."""
    device = next(run.model.parameters()).device
    costs = layer_costs(run.model, example_input(run.info, device, 1))
    packed = sum(record["codes"].numel() for record in records.values())
    float_weights = 0
    for name, module in run.model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in records:
            float_weights += 4 * module.weight.numel()
    return {"packed_weight_bytes": packed, "float_weight_bytes": float_weights,
            "reported_weight_memory_bytes": sum(math.ceil(c.weight_memory_bits / 8) for c in costs)}


def integer_export(run: SavedRun, option: str = "format=int") -> dict[str, Any]:
    """The ``format=int`` export of ``run`` (see the module docstring); ``option`` is what asked for
    it (``backend=int`` for qnnrun eval), named in the error for a run with no quantized weights."""
    device = next(run.model.parameters()).device
    records = integer_records(run.model, probe_batch(run.info, device))
    if not records:
        name = run.config.method.name
        what = (f"method={name}" if name == "fp" else
                f"method={name} at bits.w={run.config.bits.w} with every layer's weights float")
        raise QnnrunError(f"{what} has no quantized weights: {option} needs a run with quantized weights "
                          f"(valid: every method but fp, at weight widths 1-8)")
    replaced = exported_keys(records)
    # An input quantizer's extra state (a float layer's quantized input) is a dict, not a tensor.
    float_state = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in run.model.state_dict().items()
                   if not replaced(k)}
    return {"format": INT_FORMAT, "version": INT_VERSION, "config": OmegaConf.to_container(run.config),
            "info": asdict(run.info), "epoch": run.epoch, "layers": records, "float_state": float_state,
            "sizes": weight_sizes(run, records), "bn_folded_in_training": bool(getattr(run.method, "folded", False))}


def _flatten(tree: Any, blob: bytearray) -> Any:
    """``tree`` with every tensor replaced by ``("tensor", dtype, shape, offset, bytes)`` into ``blob``."""
    if isinstance(tree, Tensor):
        data = tree.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        blob += data
        return ("tensor", str(tree.dtype).removeprefix("torch."), list(tree.shape), len(blob) - len(data), len(data))
    if isinstance(tree, dict):
        return {key: _flatten(value, blob) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_flatten(value, blob) for value in tree]
    return tree


def _unflatten(tree: Any, blob: Tensor) -> Any:
    if isinstance(tree, tuple) and tree[:1] == ("tensor",):
        _, dtype, shape, offset, size = tree
        return blob[offset:offset + size].clone().view(getattr(torch, dtype)).reshape(shape)
    if isinstance(tree, dict):
        return {key: _unflatten(value, blob) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(value, blob) for value in tree]
    return tree


def save_integer_export(export: dict[str, Any], path: str | Path) -> None:
    """Write an export atomically as one uint8 tensor holding every tensor's bytes plus the plain
    structure (offsets, dtypes, shapes), so the file is its payload plus a small fixed overhead."""
    blob = bytearray()
    tree = _flatten(export, blob)
    save_atomic({"format": INT_FORMAT, "version": INT_VERSION, "tree": tree,
                 "blob": torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)},
                path)


def load_integer_export(path: str | Path) -> dict[str, Any]:
    """Read a ``format=int`` file; a foreign or damaged file is a one-line error."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        check_archive(path, str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every reader error means the same to the user
        raise QnnrunError(f"{path} is not a readable qnnrun integer export: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("format") != INT_FORMAT:
        raise QnnrunError(f"{path} is not a qnnrun integer export (format {INT_FORMAT})")
    if data.get("version") != INT_VERSION:
        raise QnnrunError(f"{path} has integer export version {data.get('version')}, this qnnrun reads {INT_VERSION}")
    return _unflatten(data["tree"], data["blob"])


def integer_model(export: dict[str, Any], device: torch.device) -> nn.Module:
    """The integer model of an export, rebuilt from its config and records on ``device``."""
    config = saved_config(export["config"])
    info = DataInfo(**export["info"])
    model, _ = build_quantized_model(config, info, device, like=export["float_state"])
    missing, unexpected = model.load_state_dict(export["float_state"], strict=False)
    replaced = exported_keys(export["layers"])
    if unexpected or any(not replaced(k) for k in missing):
        raise QnnrunError("the integer export does not fit the model its config builds (was it written by another "
                          "qnnrun version?)")
    return build_integer_model(model.eval(), export["layers"])


def export_checkpoint(checkpoint: str, fmt: str, output: str | None, device: str, check: bool = False,
                      paths: DictConfig | None = None) -> str:
    """Write the ``fmt`` export of a checkpoint next to it (or to ``output``); returns a report line.
    ``check=True`` (format=onnx; anything but a bool is refused, as the command line may give one)
    adds :func:`check_onnx`'s lines, on the run's test set read from ``paths`` (``data_dir``,
    ``cache_dir``; needed with ``check``), which is loaded before anything is written."""
    check_choice("format", fmt, FORMATS)
    if check_bool("check", check) and fmt != "onnx":
        raise QnnrunError("check=true runs the ONNX graph in onnxruntime: valid with format=onnx (the integer "
                          "model is checked by qnnrun eval backend=int)")
    source = Path(checkpoint)
    stem = source / "model" if source.is_dir() else source.with_suffix("")
    path = Path(output) if output else stem.parent / (stem.name + (".onnx" if fmt == "onnx" else ".int.pt"))
    check_output_file(output or path, "output", make_folder=True)
    if path.exists() or path.is_symlink():  # a checkpoint, a run's records, an earlier export: never replaced
        raise QnnrunError(f"output={path} exists: qnnrun export writes a new file and replaces none (remove it, "
                          f"or give output=PATH)")
    if check:
        try:
            import onnxruntime  # noqa: F401 - refused here, before the graph is written
        except ImportError:
            raise QnnrunError("check=true needs the onnxruntime package: pip install 'qnnrun[export]'") from None
    run = load_saved_run(checkpoint, select_device(device))
    if fmt == "onnx":
        from qnnrun.export.onnx import export_onnx

        data = saved_run_data(run, None, paths, next(run.model.parameters()).device) if check else None
        with new_folder(path.parent, "output"):
            export_onnx(run, path, checkpoint_file(source))
        line = f"wrote {path} ({path.stat().st_size} bytes): QuantizeLinear/DequantizeLinear graph"
        return "\n".join([line, *check_onnx(run, path, data)]) if data is not None else line
    export = integer_export(run)
    with new_folder(path.parent, "output"):
        save_integer_export(export, path)
    sizes = export["sizes"]
    return (f"wrote {path} ({path.stat().st_size} bytes): {plural(len(export['layers']), 'integer layer')}, "
            f"packed weights {sizes['packed_weight_bytes']} bytes + float weights {sizes['float_weight_bytes']} bytes "
            f"(the run's weight memory: {sizes['reported_weight_memory_bytes']} bytes, each layer rounded up to "
            f"whole bytes)")


@dataclass
class Agreement:
    """Predictions of another model (the integer model, onnxruntime's graph) against the fake-quant
    model on one test set."""

    images: int
    disagreements: int
    disagreeing: list[int]  # indices of the images whose predicted class differs
    # The integer model's logits [B, classes] and the labels [B] of each batch, for its test metrics
    # without a second pass (the integer model is the slow one: minutes for 10,000 CIFAR-10 images on a CPU).
    outputs: list[tuple[Tensor, Tensor]]

    @property
    def fraction(self) -> float:
        return 1.0 - self.disagreements / max(1, self.images)


@torch.no_grad()
def compare_predictions(fake: nn.Module, integer: nn.Module, batches: Any) -> Agreement:
    """Top-1 predictions of both models on every batch ``(images [B, C, H, W], labels [B])``; ``integer``
    is the model compared with the fake-quant one (the integer model, or an :class:`OnnxRuntimeModel`)."""
    fake.eval()
    integer.eval()
    images = wrong = 0
    disagreeing: list[int] = []
    outputs: list[tuple[Tensor, Tensor]] = []
    for x, labels in batches:
        logits = integer(x)
        outputs.append((logits, labels))
        a, b = fake(x).argmax(1), logits.argmax(1)
        differ = (a != b).nonzero().flatten().cpu()
        disagreeing += (differ + images).tolist()
        wrong += differ.numel()
        images += labels.numel()
    return Agreement(images, wrong, disagreeing, outputs)


def check_onnx(run: SavedRun, path: Path, data: DataBundle) -> list[str]:
    """One line per onnxruntime graph optimization level (off, then the default): how many of the
    test images of ``data`` the ONNX file at ``path`` classifies (top-1) unlike the PyTorch fake-quant
    model of ``run``, and which (test-set indices, the first 10)."""
    import onnxruntime

    from qnnrun.export.onnx import OPTIMIZATION_LEVELS, OnnxRuntimeModel

    lines = []
    for level, words in OPTIMIZATION_LEVELS.items():
        agreement = compare_predictions(run.model, OnnxRuntimeModel(path, level), data.test)
        shown = ", ".join(str(i) for i in agreement.disagreeing[:10])
        which = f" (test images {shown}{', ...' if agreement.disagreements > 10 else ''})" if shown else ""
        lines.append(f"check: {agreement.disagreements} of {agreement.images} test predictions differ between "
                     f"onnxruntime {onnxruntime.__version__} ({words}, {level}) and the PyTorch fake-quant "
                     f"model{which}")
    return lines


def evaluate_integer(checkpoint: str, dataset: DictConfig | None, paths: DictConfig, device: str) -> str:
    """``qnnrun eval backend=int``: the integer model's test metrics (the line ``backend=fake``
    prints) and its agreement with the fake-quant model."""
    torch_device = select_device(device)
    run = load_saved_run(checkpoint, torch_device)
    model = integer_model(integer_export(run, "backend=int"), torch_device)
    data = saved_run_data(run, dataset, paths, torch_device)
    agreement = compare_predictions(run.model, model, data.test)
    line = eval_report_line(run, data, evaluate(nn.Identity(), agreement.outputs, run.info.num_classes))
    return (f"{line}  [backend=int: {agreement.disagreements} of {agreement.images} predictions differ from "
            f"fake-quant ({100 * agreement.fraction:.2f}% agree)]")
