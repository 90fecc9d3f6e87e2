"""The steady-state training step of every method makes no host sync.

A host sync (``.item()``, ``.tolist()``, ``bool(tensor)``, or a tensor built from host data and
copied to the device) stalls the training loop until the GPU has caught up with it. On an H100,
``method=ste`` ran 3.6x slower than ``method=lsq`` in one sweep of runs sharing the GPU: each of
its quantizer calls built its zero point with ``torch.as_tensor(0, device=cuda)``, a host-to-device
copy that synchronises the stream, about 40 times per step.

The CPU dispatcher shows them: ``aten._local_scalar_dense`` is a value read back to the host,
``aten.lift_fresh`` a tensor made from host data (on a GPU a host-to-device copy), and ops such as
``unique`` or ``nonzero`` have an output size that a GPU must send to the host. (``.tolist()`` of
a CPU tensor reads memory without a dispatched op; on a GPU it starts with a device-to-host copy,
and what it lists usually comes from one of those ops.) Steps that
change a method's state may sync (a progressive method calibrating the next layer, a UNIQ stage
switch); the steps checked here are ordinary ones in the middle of an epoch.
"""

from __future__ import annotations

import pytest
import torch
from mid_run import MidRun
from torch.utils._python_dispatch import TorchDispatchMode

from qnnrun.methods import METHODS

# A value read back, host data lifted, and ops whose output size depends on the data (a GPU must
# tell the host how big the result is).
HOST_SYNCS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten._unique", "aten.unique", "aten.nonzero",
              "aten.masked_select")


class HostSyncSpy(TorchDispatchMode):
    """Records every dispatched op that reads a value back to the host or lifts host data."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        name = str(func)
        if name.startswith(HOST_SYNCS):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_step_makes_no_host_sync(method: str) -> None:
    run = MidRun(method)
    spy = HostSyncSpy()
    with spy:
        losses = [run.train_step()[0] for _ in range(2)]
    assert spy.calls == [], f"{method}: {len(spy.calls)} host syncs in 2 training steps: {sorted(set(spy.calls))}"
    assert torch.isfinite(losses[-1])
