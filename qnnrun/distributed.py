"""Data-parallel training of one run over several processes (DistributedDataParallel).

Two ways in:

- ``qnnrun train trainer.devices=N``: :func:`spawn` starts N worker processes on this machine
  (one per GPU, or N CPU processes with the gloo backend) and waits for them;
- ``torchrun --nproc_per_node=N -m qnnrun.cli train ...`` (or ``srun`` with the torchrun
  variables set): every process already is a rank; :func:`init` joins the process group.

The global batch is ``dataset.batch_size`` whatever the number of ranks: every rank draws the
same (seeded) global batch and trains on its share (the loaders' ``shard``), so a run on N devices
sees the same samples, in the same order and with the same augmentation, as a run on one.
Gradients are averaged by DDP; metrics are summed over ranks; only rank 0 writes files.
After every optimizer step the buffers (BatchNorm statistics, activation ranges) of rank 0 are
copied to all ranks, so every data-dependent quantizer decision sees the same state everywhere;
after the first step its parameters too, for quantizers that start from their first training
batch (``quant.calib_batches=0``), which each rank sees only a share of. At each epoch end the
ranks check that their weights and buffers agree exactly.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from qnnrun.errors import Interrupted, QnnrunError

log = logging.getLogger("qnnrun")

# Environment variables torchrun (and our own spawn) set for every rank.
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and TensorBoard events."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or :func:`spawn`) with the rank variables set."""
    return all(name in os.environ for name in RANK_VARIABLES)


def init(device_spec: str) -> tuple[Ranks, torch.device | None]:
    """Join the process group when this process is one rank of several; returns the ranks and the
    device this rank must use (``None``: not distributed, choose as usual).

    The backend is NCCL on CUDA (one GPU per local rank) and gloo on CPU.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks(), None
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    use_cuda = torch.cuda.is_available() and str(device_spec) in ("auto", "cuda")
    if str(device_spec) not in ("auto", "cuda", "cpu"):
        raise QnnrunError(f"trainer.device={device_spec} with several processes is not valid: valid are auto, cuda "
                          f"(rank r uses cuda:<local rank>) or cpu")
    if use_cuda and ranks.local_rank >= torch.cuda.device_count():
        raise QnnrunError(f"local rank {ranks.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                          f"start at most that many processes per node")
    device = torch.device("cuda", ranks.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=ranks.rank, world_size=ranks.world)
    if not ranks.main:  # one log: rank 0's
        log.setLevel(logging.WARNING)
    return ranks, device


def finish(ranks: Ranks) -> None:
    """Leave the process group (every rank, at the end of a run).

    The run's DistributedDataParallel wrapper outlives a completed run in reference cycles (measured:
    one per rank); it holds the group and the gradient reducer's last works. Collected later, after
    the group is gone or while the interpreter exits, it can abort the process ("terminate called
    without an active exception", pytorch/pytorch#179291), so the cycles are collected first. (After
    an error the exception's traceback still holds the run until it is handled.)
    """
    if ranks.active and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def broadcast_path(path: Path, ranks: Ranks) -> Path:
    """Rank 0's ``path`` on every rank (under torchrun each rank's Hydra picks its own timestamped
    run folder; the run writes into rank 0's)."""
    if not ranks.active:
        return path
    holder = [str(path)]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def wrap(model: nn.Module, ranks: Ranks, device: torch.device, static_parameters: bool) -> nn.Module:
    """``model`` for training forward passes: DistributedDataParallel when distributed.

    ``static_parameters=False`` (methods that change the set of trained parameters during the run:
    BatchNorm folding in nbn/fbf/lbl, frozen UNIQ blocks) lets DDP look for unused parameters.
    DDP copies rank 0's weights and buffers to every rank once, here; later buffers are copied
    after each step by :func:`sync_buffers` instead of before each forward.
    """
    if not ranks.active:
        return model
    parameters = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    # torch 2.14 renamed broadcast_buffers (2.11 knows only the old name).
    no_forward_sync = {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=not static_parameters, **no_forward_sync)


def sync_buffers(model: nn.Module, ranks: Ranks) -> None:
    """Copy rank 0's buffers (running statistics, quantizer ranges, channel states) to every rank."""
    if ranks.active:
        _broadcast_from_rank0(list(model.buffers()))


def sync_parameters(model: nn.Module, ranks: Ranks) -> None:
    """Copy rank 0's parameters to every rank: after the first step of a run whose quantizers start
    from their first training batch (``quant.calib_batches=0``: LSQ's steps, PACT's clip levels),
    which each rank saw only its share of."""
    if ranks.active:
        with torch.no_grad():
            _broadcast_from_rank0(list(model.parameters()))


def _broadcast_from_rank0(tensors: list[Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every rank: one broadcast per dtype (flattened into one tensor)."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        dist.broadcast(flat, src=0)
        for tensor, part in zip(group, flat.split([tensor.numel() for tensor in group])):
            tensor.copy_(part.view_as(tensor))


def sum_over_ranks(values: Tensor, ranks: Ranks) -> Tensor:
    """``values`` summed over all ranks (returned as is when not distributed)."""
    if ranks.active:
        values = values.clone()
        dist.all_reduce(values)
    return values


def any_rank(flag: bool, device: torch.device, ranks: Ranks) -> bool:
    """True when ``flag`` is true on any rank (every rank must call this at the same point)."""
    if not ranks.active:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def check_agreement(model: nn.Module, ranks: Ranks, device: torch.device) -> None:
    """Raise when the ranks' parameters or buffers differ (they must be identical replicas)."""
    if not ranks.active:
        return
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point() or t.dtype == torch.int64]
    sums = torch.stack([t.detach().double().sum() for t in tensors]).to(device)
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differ = (low != high) & ~(low.isnan() & high.isnan())
    if bool(differ.any()):
        names = [name for name, _ in (*model.named_parameters(), *model.named_buffers())]
        raise QnnrunError(f"the {ranks.world} ranks' models differ (first: {names[int(differ.nonzero()[0])]}): a "
                          f"method hook made a data-dependent change to parameters; please report it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(train: Callable[..., Any], config: dict[str, Any], run_dir: Path, devices: int,
          overrides: list[str]) -> dict[str, Any]:
    """Run ``train(cfg, run_dir, overrides)`` (a module-level function: the ranks import it by name)
    on ``config`` (a resolved run config, given by command-line ``overrides``) as ``devices`` ranks
    on this machine; returns rank 0's summary. A rank's QnnrunError (or Interrupted) is re-raised
    here as one line."""
    if torch.cuda.is_available() and str(config["trainer"]["device"]) in ("auto", "cuda"):
        if devices > torch.cuda.device_count():
            raise QnnrunError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} GPU(s)")
    port = _free_port()
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    processes = mp.start_processes(_worker, args=(train, devices, port, config, str(run_dir), overrides, errors),
                                   nprocs=devices, join=False, start_method="spawn")

    def forward(signum: int, frame: Any) -> None:  # a scheduler may signal only this parent
        for process in processes.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not processes.join():
            pass
    except mp.ProcessExitedException as exited:
        raise QnnrunError(f"rank {exited.error_index} of trainer.devices={devices} exited with code "
                          f"{exited.exit_code}") from None
    except mp.ProcessRaisedException as raised:
        lines = str(raised).strip().splitlines()
        raise QnnrunError(f"rank {raised.error_index} failed: {lines[-1] if lines else raised}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not errors.empty():  # ranks report QnnrunError/Interrupted here and exit normally
        kind, message, signum = errors.get()
        raise Interrupted(message, signum) if kind == "interrupted" else QnnrunError(message)
    from qnnrun.runs import read_summary

    summary = read_summary(run_dir)
    if summary is None:
        raise QnnrunError(f"trainer.devices={devices}: the ranks finished but {run_dir}/summary.json is missing")
    return summary


def _worker(index: int, train: Callable[..., Any], world: int, port: int, config: dict[str, Any], run_dir: str,
            overrides: list[str], errors: Any) -> None:
    """One spawned rank: set the torchrun variables, log like the parent (rank 0 only), train."""
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if index == 0:
        format_ = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(Path(run_dir) / "train.log")):
            handler.setFormatter(format_)
            log.addHandler(handler)
        log.setLevel(logging.INFO)
    from omegaconf import OmegaConf

    # Errors go to the parent through the queue and the rank exits normally: a non-zero exit would
    # make torch.multiprocessing kill the other ranks, perhaps while rank 0 writes a checkpoint.
    try:
        train(OmegaConf.create(config), Path(run_dir), overrides)
    except Interrupted as error:
        if index == 0:
            errors.put(("interrupted", str(error), error.signum))
    except QnnrunError as error:
        errors.put(("error", str(error), 0))
