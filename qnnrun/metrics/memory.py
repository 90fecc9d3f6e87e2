"""Memory of a training step: what autograd saves for backward, and the traffic of its kernels."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class SavedForBackward(torch.autograd.graph.saved_tensors_hooks):
    """Context manager that counts the tensors autograd saves for backward inside it.

    Each storage is counted once, however many saved tensors view it (a ReLU's output and the
    next layer's input are one storage). Saved tensors are kept as they are. A compiled graph's
    saved tensors go through the same hooks.

        with SavedForBackward() as saved:
            loss = criterion(model(images), labels)
        saved.nbytes  # bytes
    """

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}  # storage address -> bytes
        super().__init__(self._pack, self._unpack)

    def __enter__(self) -> SavedForBackward:
        super().__enter__()
        return self

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: Tensor) -> Tensor:
        return tensor

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct storages saved so far."""
        return sum(self.storages.values())


class KernelTraffic(TorchDispatchMode):
    """Context manager that counts the ATen kernels run inside it and the bytes they move.

    Every op but views and allocations counts as one kernel that reads each tensor argument and
    writes each result once (an in-place op reads and writes its tensor). In eager mode on a GPU,
    element-wise work is bound by this traffic, so the bytes moved by a training step, against
    those of the float step, predict how much slower its quantizers make it (plus launch overhead
    per kernel), and can be counted on any device. Convolutions count as one pass over their
    operands, which understates their real traffic: compare steps of the same model.

        with KernelTraffic() as traffic:
            train_step(...)
        traffic.kernels, traffic.nbytes, traffic.by_op.most_common(5)
    """

    def __init__(self) -> None:
        super().__init__()
        self.kernels = 0
        self.nbytes = 0
        self.by_op: Counter[str] = Counter()  # op name -> bytes moved

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.is_view or func.__name__.split(".")[0] in NO_KERNEL:
            return out
        reads = {id(t): t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        writes = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        moved = sum(t.numel() * t.element_size() for t in [*reads.values(), *writes])
        self.kernels += 1
        self.nbytes += moved
        self.by_op[func.__name__.split(".")[0]] += moved
        return out


# Ops that allocate or relabel memory without running a kernel over it.
NO_KERNEL = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                       "_unsafe_view", "lift_fresh", "_local_scalar_dense", "set_", "resize_"})
