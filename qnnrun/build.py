"""Config -> objects: the device, the seeds, the quantized model of a run (optionally started from
``init_from``'s weights) and the checks on ``init_from``. No training happens here."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.checkpoint import checkpoint_file, load_checkpoint
from qnnrun.data import DataInfo
from qnnrun.errors import QnnrunError
from qnnrun.methods import Method, build_method
from qnnrun.models import build_model
from qnnrun.quant.fold import adopt_folding
from qnnrun.quant.layers import set_recompute_input


def select_device(spec: str, key: str = "device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu`` | ``cuda`` | ``cuda:N`` as given. An error
    names the option ``key`` (``trainer.device`` for a training)."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise QnnrunError(f"{key}={spec!r} is not valid: valid are auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QnnrunError(f"{key}={spec!r} asked for but CUDA is not available here: use {key}=cpu or auto")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def example_input(info: DataInfo, device: torch.device, batch: int = 2) -> Tensor:
    """A zero batch [batch, C, H, W] shaped like the data set's images."""
    return torch.zeros(batch, info.in_channels, info.image_size, info.image_size, device=device)


def build_quantized_model(cfg: DictConfig, info: DataInfo, device: torch.device, init_from: str | None = None,
                          like: Mapping[str, Tensor] | None = None,
                          folded: Iterable[str] | None = None) -> tuple[nn.Module, Method]:
    """The float model of ``cfg.model`` (optionally loaded from ``init_from``), converted by ``cfg.method``.

    ``init_from``'s weights go into the float model; a checkpoint that does not fit it but fits the
    converted model (a run of the same method, when the method changes the layout) goes into that.
    ``like``: the state dict that will be loaded into the result (a resume, ``qnnrun eval``); the
    float model first takes its BatchNorm-folded structure (:func:`adopt_folding`), with the
    BatchNorms ``folded`` (a resume: those its run started with folded) or by default those ``like``
    holds folded, as a run started from a folded checkpoint had them."""
    model = build_model(cfg.model, in_channels=info.in_channels, num_classes=info.num_classes,
                        image_size=info.image_size).to(device)
    state = load_checkpoint(init_from)["model"] if init_from else None
    misfit = _misfit(model, state, init_from) if state is not None else None
    if state is not None and misfit is None:
        load_weights(model, state)
    if like is not None:
        adopt_folding(model, like, folded)
    method = build_method(cfg)
    model = method.build(model, example_input(info, device)).to(device)
    if misfit is not None:
        # A run whose method changed the float layout (bnn/qnn/aqe wrap the last layer with an output
        # BatchNorm) fits the model as this method builds it, when it is the same method.
        if _misfit(model, state, init_from) is not None:
            raise QnnrunError(misfit)
        load_weights(model, state)
    set_recompute_input(model, bool(cfg.trainer.recompute_quant))
    return model, method


def check_init_from(path: str) -> None:
    """Fail before the data set is read when ``init_from`` names no checkpoint. Where a preset set
    ``init_from`` (``conf/experiment/<name>.yaml``), the error points at that file, whose header
    gives the command that makes the float run."""
    try:
        checkpoint_file(path, "init_from")
    except QnnrunError as error:
        from hydra.core.hydra_config import HydraConfig

        experiment = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
        hint = (f"; experiment={experiment} starts from a float run: the command that makes it is in the "
                f"header of conf/experiment/{experiment}.yaml" if experiment else "")
        raise QnnrunError(f"{error}{hint}") from None


def init_test_acc(init_from: str | None) -> float | None:
    """Test accuracy (%) of the weights in ``init_from``: what its run logged at the end of the epoch
    it was saved after. ``None`` without ``init_from``, for a checkpoint saved mid-epoch or after an
    epoch that was not evaluated, and for one that cannot be read any more (a resumed run whose
    starting checkpoint has moved): the summary's baseline for "how much did quantization cost"."""
    if not init_from:
        return None
    try:
        checkpoint = load_checkpoint(init_from)
    except QnnrunError:
        return None
    history = checkpoint.get("history") or []
    if "partial" in checkpoint or not history or "test_acc" not in history[-1]:
        return None
    return float(history[-1]["test_acc"])


def load_weights(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``model``'s own keys from a checkpoint's ``state``, leaving the others (quantizer state)
    behind; the model first takes the structure of a BatchNorm-folded ``state`` (:func:`adopt_folding`),
    so the folded shifts are loaded, not dropped."""
    adopt_folding(model, state)
    model.load_state_dict({k: state[k] for k in model.state_dict()})


def _misfit(model: nn.Module, state: Mapping[str, Tensor], path: str) -> str | None:
    """Why checkpoint weights ``state`` cannot be loaded into ``model`` (a key of the model missing
    from it, or of another shape: another architecture), or ``None`` when they can. Keys of the
    checkpoint that the model lacks (a quantized run's quantizer state) do not matter."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and isinstance(own[k], Tensor)
             and (not isinstance(state[k], Tensor) or state[k].shape != own[k].shape)]
    if not missing and not wrong:
        return None
    return (f"init_from={path} does not fit this model ({len(missing)} missing, {len(wrong)} mis-shaped "
            f"parameters, e.g. '{(missing + wrong)[0]}'): was it trained with another model or data set?")
