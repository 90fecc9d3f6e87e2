"""Fold BatchNorm into the preceding conv/linear layer (``quant.fold_bn``).

In eval mode ``BN(conv(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` equals a conv
with weight ``W * k`` and bias ``(b - mean) * k + beta``, ``k = gamma / sqrt(var + eps)`` per
output channel. Folding before the weight quantization parameters are computed makes the
quantized weights the ones an integer inference engine would run.

Folding is done in two steps so that it can happen in the middle of a run:

1. :func:`batchnorm_pairs` (at build time, before the optimizer exists) finds each BatchNorm fed
   directly by a conv/linear and gives that layer a zero bias parameter if it has none (exact:
   BatchNorm removes any constant before it), so the optimizer knows every parameter the folded
   network trains.
2. :func:`fold_batchnorm` rewrites the weights and biases in place (same ``Parameter`` objects)
   and replaces each BatchNorm by a :class:`FoldedBatchNorm`, the identity, which keeps
   BatchNorm's state-dict keys so checkpoints load into a freshly built model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from qnnrun.quant.convert import probe_forward

_BatchNorm = nn.modules.batchnorm._BatchNorm


class FoldedBatchNorm(nn.Module):
    """The identity left where a BatchNorm was folded away.

    Its buffers are the identity BatchNorm (``weight = 1``, ``bias = 0``, ``running_mean = 0``,
    ``running_var = 1 - eps``), so the state dict of a folded model also loads into an unfolded one
    and evaluates the same in eval mode.
    """

    def __init__(self, num_features: int, eps: float) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.full((num_features,), 1.0 - eps))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.num_features}, folded"


def batchnorm_pairs(model: nn.Module, example_input: Tensor) -> list[tuple[str, str]]:
    """``(layer, batchnorm)`` qualified names of every BatchNorm whose input is the output of a
    conv/linear, found on one eval-mode forward pass of ``example_input`` [B, C, H, W]; each such
    layer without a bias gets a zero one (same device and dtype as its weight)."""
    layers = {m: name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    norms = {m: name for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []

    def after_layer(module: nn.Module, _inputs: object, output: Tensor) -> None:
        produced[id(output)] = layers[module]

    def before_norm(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        source = produced.get(id(inputs[0]))
        if source is not None and (source, norms[module]) not in pairs:
            pairs.append((source, norms[module]))

    probe_forward(model, example_input, {m: after_layer for m in layers}, {m: before_norm for m in norms})
    for layer_name, _ in pairs:
        _give_bias(model.get_submodule(layer_name))
    return pairs


def _give_bias(layer: nn.Module) -> None:
    """Give a conv/linear ``layer`` without a bias a zero one (same device and dtype as its weight)."""
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device,
                                              dtype=layer.weight.dtype))


def adopt_folding(model: nn.Module, state: Mapping[str, Tensor], norms: Iterable[str] | None = None) -> None:
    """Give ``model`` the structure of a BatchNorm-folded network whose state dict is ``state`` (a
    checkpoint of nbn/fbf/lbl, ``quant.fold_bn``, or of a run started from one): a zero bias for
    each conv/linear whose bias ``state`` holds, and a :class:`FoldedBatchNorm` for each BatchNorm
    named in ``norms``, by default each that ``state`` holds as one (its identity entries; a
    BatchNorm that trained has counted batches and one that did not has ``running_var`` 1, so
    neither is taken for one). Loading ``state`` afterwards gives the checkpoint's network."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and f"{name}.bias" in state:
            _give_bias(module)
    if norms is None:
        norms = [name for name, module in model.named_modules()
                 if isinstance(module, _BatchNorm) and _holds_folded(state, name, module)]
    mark_folded(model, norms)


def _holds_folded(state: Mapping[str, Tensor], name: str, norm: nn.Module) -> bool:
    """Whether ``state`` holds BatchNorm ``name`` as :class:`FoldedBatchNorm`'s identity entries."""
    identity = FoldedBatchNorm(norm.num_features, norm.eps).state_dict()
    entries = {key: state.get(f"{name}.{key}") for key in identity}
    return all(isinstance(value, Tensor) and value.shape == identity[key].shape
               and torch.equal(value.to(identity[key].dtype).cpu(), identity[key]) for key, value in entries.items())


def folded_norms(model: nn.Module) -> list[str]:
    """Qualified names of ``model``'s :class:`FoldedBatchNorm` modules."""
    return [name for name, module in model.named_modules() if isinstance(module, FoldedBatchNorm)]


@torch.no_grad()
def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each BatchNorm of ``pairs`` (from :func:`batchnorm_pairs`) into its layer, in place,
    using its running statistics; a pair already folded is skipped."""
    for layer_name, norm_name in pairs:
        norm = model.get_submodule(norm_name)
        if isinstance(norm, FoldedBatchNorm):
            continue
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError(f"{norm_name} tracks no running statistics: it cannot be folded")
        layer = model.get_submodule(layer_name)
        factor = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            factor = factor * norm.weight
        shift = -norm.running_mean * factor
        if norm.bias is not None:
            shift = shift + norm.bias
        layer.bias.copy_(layer.bias * factor + shift)
        layer.weight.mul_(factor.view(-1, *([1] * (layer.weight.dim() - 1))))
        folded = FoldedBatchNorm(norm.num_features, norm.eps).to(layer.weight.device)
        model.set_submodule(norm_name, folded)


def mark_folded(model: nn.Module, norms: Iterable[str]) -> None:
    """Replace the BatchNorms named ``norms`` by :class:`FoldedBatchNorm` without touching the weights:
    for a model whose folded weights were loaded from a checkpoint into a freshly built model."""
    for norm_name in norms:
        norm = model.get_submodule(norm_name)
        if not isinstance(norm, FoldedBatchNorm):
            model.set_submodule(norm_name, FoldedBatchNorm(norm.num_features, norm.eps).to(norm.running_mean.device))
