"""Activation memory: what autograd saves for backward."""

from __future__ import annotations

import torch
from torch import Tensor


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
